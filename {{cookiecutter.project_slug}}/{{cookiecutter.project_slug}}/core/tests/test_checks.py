"""The topology checks run by ``manage.py check`` catch routing mistakes."""

import pytest
from django.core.management import call_command
from kombu import Exchange, Queue

from config import topology
from config.celery_app import app

from ..checks import check_pools, check_task_routes


def ids(messages):
    return {message.id for message in messages}


def test_the_project_passes_its_own_checks():
    assert check_task_routes(None) == []
    assert check_pools(None) == []
    call_command("check", "--fail-level", "WARNING")


def test_fixed_tasks_route_to_their_queues():
    router = app.amqp.router
    expected = {
        "{{ cookiecutter.project_slug }}.users.tasks.send_password_reset_email": "high",
        "{{ cookiecutter.project_slug }}.payments.tasks.process_payment": "high",
        "{{ cookiecutter.project_slug }}.exports.tasks.generate_csv_export": "export",
        # Exceptions to their module's glob.
        "{{ cookiecutter.project_slug }}.payments.tasks.reconcile_stuck_payments": "default",
        "{{ cookiecutter.project_slug }}.exports.tasks.export_watchdog": "default",
        "{{ cookiecutter.project_slug }}.exports.tasks.cleanup_expired_exports": "low",
    }
    for name, queue in expected.items():
        assert name in app.tasks
        assert router.route({}, name)["queue"].name == queue


@pytest.fixture
def stray_task():
    """A task in a module that no route covers."""

    @app.task(name="elsewhere.tasks.stray")
    def stray():
        pass

    yield stray
    app.tasks.pop(stray.name)


def test_unrouted_task_fails_the_check(stray_task):
    assert ids(check_task_routes(None)) == {"topology.E001"}


def test_route_listed_after_a_broader_glob_fails_the_check(monkeypatch):
    # Celery takes the first glob that matches: listed last, this exception would
    # send reconciliation to "high" with every other payments task.
    routes = dict(topology.ROUTES)
    exception = "*.payments.tasks.reconcile_stuck_payments"
    routes[exception] = routes.pop(exception)
    monkeypatch.setitem(app.conf, "task_routes", routes)
    errors = check_task_routes(None)
    assert ids(errors) == {"topology.E013"}
    assert errors[0].obj == exception


def test_an_exact_task_name_after_a_glob_is_not_shadowed(monkeypatch):
    # Celery matches exact names before globs, wherever they stand in the map.
    routes = dict(topology.ROUTES)
    routes["{{ cookiecutter.project_slug }}.payments.tasks.reconcile_stuck_payments"] = "default"
    monkeypatch.setitem(app.conf, "task_routes", routes)
    assert check_task_routes(None) == []


def test_route_to_unknown_queue_fails_the_check(stray_task, monkeypatch):
    monkeypatch.setitem(app.conf, "task_routes", {**topology.ROUTES, "elsewhere.*": "urgent"})
    assert ids(check_task_routes(None)) == {"topology.E002"}


def test_queue_without_a_pool_fails_the_check(monkeypatch):
    monkeypatch.setattr(topology, "QUEUES", (*topology.QUEUES, "reports"))
    assert ids(check_pools(None)) == {"topology.E003"}


def with_pool(monkeypatch, name, **changes):
    """The topology with one pool changed (dataclasses.replace keeps the rest)."""
    from dataclasses import replace

    pools = tuple(replace(pool, **changes) if pool.name == name else pool for pool in topology.POOLS)
    monkeypatch.setattr(topology, "POOLS", pools)


def test_a_pool_whose_queue_cannot_wait_for_a_cold_start_may_not_scale_to_zero(monkeypatch):
    with_pool(monkeypatch, "worker-high", min_replicas=0)
    errors = check_pools(None)
    assert ids(errors) == {"topology.E014"}
    assert "'high'" in errors[0].msg
    assert "min_replicas=1" in errors[0].hint


def test_a_pool_whose_queues_can_wait_may_scale_to_zero(monkeypatch):
    export = topology.pool_named("worker-export")
    assert export.min_replicas == 0  # as shipped
    assert topology.SLA_SECONDS["export"] >= topology.COLD_START_SECONDS
    with_pool(monkeypatch, "worker-default", min_replicas=0)
    # default's SLA (10 s) is shorter than a cold start; low's (300 s) is not.
    assert [error.msg.split("queue ")[1].split()[0] for error in check_pools(None)] == ["'default'"]


@pytest.mark.parametrize(("low", "high"), [(2, 1), (-1, 3), (0, 0)])
def test_replica_bounds_out_of_order_fail_the_check(monkeypatch, low, high):
    with_pool(monkeypatch, "worker-export", min_replicas=low, max_replicas=high)
    assert ids(check_pools(None)) == {"topology.E015"}


def test_visibility_timeout_below_longest_time_limit_fails_the_check(settings):
    settings.CELERY_BROKER_URL = "redis://localhost:6379/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": topology.longest_time_limit()}
    assert ids(check_pools(None)) == {"topology.E007"}


def test_task_time_limit_longer_than_its_pool_warns(monkeypatch):
    task = app.tasks["{{ cookiecutter.project_slug }}.users.tasks.send_password_reset_email"]
    monkeypatch.setattr(task, "time_limit", 600)
    assert ids(check_task_routes(None)) == {"topology.W001"}


def test_visibility_timeout_exceeds_every_hard_limit():
    assert all(pool.time_limit < topology.VISIBILITY_TIMEOUT for pool in topology.POOLS)


def test_retry_backoff_longer_than_visibility_timeout_fails_the_check(settings):
    settings.CELERY_BROKER_URL = "redis://localhost:6379/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": topology.VISIBILITY_TIMEOUT}
    settings.TASK_RETRY_POLICY = settings.TASK_RETRY_POLICY | {"retry_backoff_max": topology.VISIBILITY_TIMEOUT}
    assert ids(check_pools(None)) == {"topology.E008"}


def test_beat_entry_without_queue_or_expires_fails_the_check(settings):
    from ..checks import check_beat_schedule

    assert check_beat_schedule(None) == []
    settings.CELERY_BEAT_SCHEDULE = {"nightly": {"task": "x", "schedule": 60, "options": {}}}
    assert ids(check_beat_schedule(None)) == {"topology.E009", "topology.E010"}


def test_quorum_queue_on_a_direct_exchange_fails_the_check(settings):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@localhost:5672//"
    settings.CELERY_TASK_QUEUES = [
        Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
        for name in topology.QUEUES
    ]
    assert ids(check_pools(None)) == {"topology.E012"}
    # Topic exchanges, as the RabbitMQ option of the template declares them, pass.
    settings.CELERY_TASK_QUEUES = [
        Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
        for name in topology.QUEUES
    ]
    assert ids(check_pools(None)) == set()
