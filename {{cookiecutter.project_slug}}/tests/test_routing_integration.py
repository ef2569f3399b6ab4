"""Each example task runs on the pool of its queue, with real workers and a real broker."""

import pytest
from django.contrib.auth import get_user_model

from {{ cookiecutter.project_slug }}.exports.models import ExportJob, Transaction
from {{ cookiecutter.project_slug }}.exports.tasks import generate_csv_export
from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment
from {{ cookiecutter.project_slug }}.users.tasks import send_password_reset_email

pytestmark = pytest.mark.integration
TIMEOUT = 60


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def test_password_reset_email_runs_on_worker_high(live_celery, user):
    result = send_password_reset_email.delay(user.pk)

    assert result.get(timeout=TIMEOUT) == "sent"
    assert result.queue == "high"
    assert result.worker == live_celery.hostname("worker-high")


def test_payment_runs_on_worker_high(live_celery, user):
    order = Order.objects.create(user=user, amount_cents=1250)

    result = process_payment.delay(order.pk)

    assert result.get(timeout=TIMEOUT) == "paid"
    assert result.worker == live_celery.hostname("worker-high")
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert SandboxCharge.objects.filter(idempotency_key=str(order.idempotency_key)).count() == 1


def test_csv_export_runs_on_worker_export(live_celery, user):
    Transaction.objects.bulk_create(
        Transaction(user=user, created_at="2026-01-01T00:00:00Z", amount=i, currency="EUR", description=f"t{i}")
        for i in range(1, 121)
    )
    job = ExportJob.objects.create(user=user)

    result = generate_csv_export.delay(job.pk)

    assert result.get(timeout=TIMEOUT) == "completed"
    assert result.queue == "export"
    assert result.worker == live_celery.hostname("worker-export")
    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED
    assert job.processed_rows == 120
    with job.file.open("r") as handle:
        assert len(handle.read().splitlines()) == 121  # header + rows


def test_each_pool_consumes_exactly_its_queues(live_celery):
    """worker-default must not take "high" work, nor worker-high "export" work."""
    from config.celery_app import app

    active = app.control.inspect(timeout=2.0).active_queues() or {}
    consumed = {host: {queue["name"] for queue in queues} for host, queues in active.items()}
    assert consumed[live_celery.hostname("worker-high")] == {"high"}
    assert consumed[live_celery.hostname("worker-default")] == {"default", "low"}
    assert consumed[live_celery.hostname("worker-export")] == {"export"}


def test_each_pool_runs_with_its_declared_profile(live_celery):
    """The settings passed on each worker's command line are live in that worker."""
    from config import topology
    from config.celery_app import app

    configs = app.control.inspect(timeout=2.0).conf(with_defaults=True) or {}
    stats = app.control.inspect(timeout=2.0).stats() or {}
    for pool in topology.POOLS:
        host = live_celery.hostname(pool.name)
        assert configs[host]["worker_soft_shutdown_timeout"] == pool.soft_shutdown_timeout
        assert configs[host]["worker_prefetch_multiplier"] == pool.prefetch_multiplier
        assert stats[host]["pool"]["timeouts"] == [pool.soft_time_limit, pool.time_limit]
