"""Scheduled jobs as commands (the cron alternative), housekeeping tasks, and /metrics."""

import base64
import socket
import time
from datetime import timedelta

import pytest
import redis
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import cleanup_expired_exports
from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage
from {{ cookiecutter.project_slug }}.payments.models import Order
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment, reconcile_stuck_payments

from .. import metrics, redis_client
from ..models import FailedTask


def closed_port() -> int:
    """A TCP port nobody listens on: a server that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def test_scheduled_lists_every_beat_entry(settings, capsys):
    call_command("scheduled", "list")
    out = capsys.readouterr().out
    for name in settings.CELERY_BEAT_SCHEDULE:
        assert name in out


def test_scheduled_run_dry_run_changes_nothing(user, capsys):
    old = ExportJob.objects.create(user=user)
    ExportJob.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))

    call_command("scheduled", "run", "expired-export-cleanup", "--dry-run")

    assert f"would act on [{old.pk}]" in capsys.readouterr().out
    assert ExportJob.objects.filter(pk=old.pk).exists()


def test_scheduled_run_unknown_entry_is_an_error(db):
    with pytest.raises(CommandError, match="no beat entry 'nightly'"):
        call_command("scheduled", "run", "nightly")


def test_cleanup_deletes_only_expired_exports(user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    old, new = ExportJob.objects.create(user=user), ExportJob.objects.create(user=user)
    expired = timezone.now() - timedelta(days=settings.EXPORT_RETENTION_DAYS + 1)
    ExportJob.objects.filter(pk=old.pk).update(created_at=expired)

    assert cleanup_expired_exports() == [old.pk]
    assert list(ExportJob.objects.values_list("pk", flat=True)) == [new.pk]


def test_reconciliation_redispatches_payments_stuck_in_processing(user, django_capture_on_commit_callbacks):
    stuck = Order.objects.create(user=user, amount_cents=100, status=Order.Status.PROCESSING)
    Order.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    fresh = Order.objects.create(user=user, amount_cents=100, status=Order.Status.PROCESSING)

    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile_stuck_payments() == [stuck.pk]  # and pays it (eager here)

    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert stuck.status == Order.Status.PAID
    assert fresh.status == Order.Status.PROCESSING


def test_reconciliation_pays_pending_orders_whose_message_is_not_in_the_outbox(
    user, django_capture_on_commit_callbacks
):
    an_hour_ago = timezone.now() - timedelta(hours=1)
    lost, waiting, fresh = (Order.objects.create(user=user, amount_cents=100) for _ in range(3))
    Order.objects.filter(pk__in=[lost.pk, waiting.pk]).update(updated_at=an_hour_ago)
    # The message of "waiting" is still in the outbox (the broker was down): the
    # relay will publish it, reconciliation must not send a second one.
    OutboxMessage.objects.create(task_name=process_payment.name, args=[waiting.pk], queue="high")

    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile_stuck_payments() == [lost.pk]

    statuses = [Order.objects.get(pk=order.pk).status for order in (lost, waiting, fresh)]
    assert statuses == ["paid", "pending", "pending"]
    assert OutboxMessage.objects.filter(task_name=process_payment.name, args=[lost.pk], sent_at__isnull=False).exists()
    assert OutboxMessage.objects.filter(args=[waiting.pk]).count() == 1


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_metrics_need_credentials(client, settings):
    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=basic("prometheus:wrong")).status_code == 401
    settings.METRICS_BASIC_AUTH = ""  # unset: closed to everyone
    assert client.get("/metrics", HTTP_AUTHORIZATION=basic(":")).status_code == 401


def scrape(client) -> dict[tuple[str, tuple], float]:
    """A /metrics scrape as {(sample name, sorted labels): value}."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=basic("prometheus:secret"))
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.fixture
def empty_metrics(settings, db):
    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    keys = (metrics.RUNS, metrics.DURATIONS, metrics.LATENCY, metrics.POOL_HEARTBEATS, metrics.BEAT_TICK)
    metrics.store().delete(*keys)
    yield
    metrics.store().delete(*keys)


def test_metrics_export_latency_sla_and_task_outcomes(client, empty_metrics, monkeypatch):
    # The broker's own answer is tested against real queues in tests/test_broker_integration.py.
    monkeypatch.setattr(metrics, "read_queue_lengths", lambda: {"export": 3})
    metrics.record_latency("high", 0.25)
    metrics.record_task("demo.tasks.example", "success", 0.5, "high")
    metrics.task_metrics.flush()  # the flusher thread would, within a second

    response = client.get("/metrics", HTTP_AUTHORIZATION=basic("prometheus:secret"))

    body = response.content.decode()
    assert response.status_code == 200
    assert 'celery_queue_latency_seconds{queue="high"} 0.25' in body
    assert 'celery_queue_sla_seconds{queue="high"} 1.0' in body
    assert 'celery_queue_length{queue_name="export"} 3.0' in body
    assert 'celery_task_runs_total{outcome="success",task="demo.tasks.example"} 1.0' in body
    for source in ("redis", "broker", "database"):
        assert 'celery_metrics_source_up{source="' + source + '"} 1.0' in body


def test_task_durations_make_a_cumulative_histogram(client, empty_metrics):
    for seconds in (0.003, 0.01, 0.2, 0.2, 7, 4000):  # 0.01 is in its own bucket: le means "at most"
        metrics.record_task("demo.tasks.example", "success", seconds, "default")
    metrics.record_task("demo.tasks.example", "failure", 0.04, "low")  # another queue, another histogram
    metrics.task_metrics.flush()

    samples = scrape(client)

    def bucket(le: str, queue: str = "default") -> float:
        labels = (("le", le), ("queue", queue), ("task", "demo.tasks.example"))
        return samples["celery_task_duration_seconds_bucket", labels]

    bounds = ("0.01", "0.05", "0.1", "0.25", "5.0", "10.0", "1800.0", "+Inf")
    assert [bucket(le) for le in bounds] == [2, 2, 2, 4, 4, 5, 5, 6]
    labels = (("queue", "default"), ("task", "demo.tasks.example"))
    assert samples["celery_task_duration_seconds_count", labels] == 6
    assert samples["celery_task_duration_seconds_sum", labels] == pytest.approx(4007.413)
    assert [bucket(le, "low") for le in ("0.01", "0.05", "+Inf")] == [0, 1, 1]
    low = [labels for name, labels in samples if name.endswith("_bucket") and ("queue", "low") in labels]
    assert len(low) == len(metrics.DURATION_BUCKETS) + 1  # every bound, and +Inf


def test_a_burst_of_runs_is_one_round_trip_and_none_while_recording(empty_metrics):
    """record_task runs after every task: it must not talk to Redis; one flush sends a whole burst."""
    client, executed = metrics.store(), []
    pipeline = type(client.pipeline())
    original = pipeline.execute

    def execute(pipe, *args, **kwargs):
        executed.append(len(pipe.command_stack))
        return original(pipe, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "execute", execute)
        patch.setattr(type(client), "execute_command", lambda *args, **kwargs: pytest.fail("a lone command"))
        for _ in range(1000):
            metrics.record_task("demo.tasks.example", "success", 0.5, "high")
        assert executed == []  # nothing sent yet (the flusher thread waits its second)
        metrics.task_metrics.flush()
    assert executed == [3]  # the run counter, the one bucket, the sum: summed over the burst
    assert client.hget(metrics.RUNS, "demo.tasks.example|success") == b"1000"


def test_the_flusher_thread_sends_the_counts_within_its_interval(empty_metrics):
    metrics.record_task("demo.tasks.example", "success", 0.5, "high")
    deadline = time.monotonic() + 5 * metrics.task_metrics.interval
    while metrics.store().hget(metrics.RUNS, "demo.tasks.example|success") is None:
        assert time.monotonic() < deadline, "the counts never reached Redis"
        time.sleep(0.05)


def test_counts_a_flush_could_not_send_go_with_the_next_one(empty_metrics, monkeypatch, caplog):
    metrics.record_task("demo.tasks.example", "failure", 0.5, "high")
    working = metrics.store
    monkeypatch.setattr(metrics, "store", lambda: redis.Redis(port=closed_port(), socket_connect_timeout=0.2))
    metrics.task_metrics.flush()  # Redis "down": logged, kept
    assert "kept for the next flush" in caplog.text
    metrics.record_task("demo.tasks.example", "failure", 0.5, "high")
    monkeypatch.setattr(metrics, "store", working)
    metrics.task_metrics.flush()
    assert working().hget(metrics.RUNS, "demo.tasks.example|failure") == b"2"


def test_dead_letters_count_the_rows_not_replayed_per_task(client, empty_metrics):
    def dead_letter(task_name: str, replayed: bool = False) -> FailedTask:
        return FailedTask.objects.create(
            task_name=task_name,
            task_id=f"{task_name}-{FailedTask.objects.count()}",
            exception_type="ValueError",
            replayed_at=timezone.now() if replayed else None,
        )

    dead_letter("demo.tasks.a"), dead_letter("demo.tasks.a"), dead_letter("demo.tasks.a", replayed=True)
    dead_letter("demo.tasks.b", replayed=True)

    samples = scrape(client)

    dead = {labels: value for (name, labels), value in samples.items() if name == "celery_dead_letters"}
    assert dead == {(("task", "demo.tasks.a"),): 2}


def test_pool_heartbeats_and_beat_tick_are_exported(client, empty_metrics):
    before = time.time()
    metrics.pool_heartbeat("worker-high")()
    metrics.Heartbeat(metrics.BEAT_TICK)()

    samples = wait_for(lambda: (s := scrape(client)) and ("celery_beat_tick_timestamp_seconds", ()) in s and s)
    pool = samples["celery_worker_pool_heartbeat_timestamp_seconds", (("pool", "worker-high"),)]
    assert before <= pool <= time.time()
    assert before <= samples["celery_beat_tick_timestamp_seconds", ()] <= time.time()


def test_a_heartbeat_never_waits_for_redis_nor_raises(settings, monkeypatch, caplog):
    """Redis down (a closed port): the caller's loop goes on at once; the write fails on its own thread."""
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setattr(redis_client, "_clients", {})
    beat = metrics.Heartbeat(metrics.BEAT_TICK, min_interval=60)

    started = time.monotonic()
    beat()
    beat()  # within min_interval: no second write
    assert time.monotonic() - started < 0.5  # a write to this Redis fails only after its retries, seconds later

    wait_for(lambda: "could not record the heartbeat metrics:beat_tick" in caplog.text, 30)
    assert caplog.text.count("could not record the heartbeat") == 1


# Whatever an Authorization header holds, as WSGI hands it over (bytes decoded as latin-1).
HOSTILE_AUTHORIZATION = {
    "non-ASCII bytes": b"Basic \xff\xfe\x00\xe9",
    "latin-1 credentials": b"Basic " + base64.b64encode("prometheus:s\xe9cret".encode("latin-1")),
    "non-UTF-8 after base64": b"Basic " + base64.b64encode(b"\xff\xfe:\x80"),
    "UTF-8 credentials": b"Basic " + base64.b64encode("prom\u00e9th\u00e9e:\u20ac".encode()),
    "garbage base64": b"Basic !!!not*base64***",
    "padding missing": b"Basic " + base64.b64encode(b"prometheus:secret").rstrip(b"="),
    "no colon": b"Basic " + base64.b64encode(b"prometheussecret"),
    "only a colon": b"Basic " + base64.b64encode(b":"),
    "scheme alone": b"Basic",
    "scheme and space": b"Basic ",
    "another scheme": b"Bearer " + base64.b64encode(b"prometheus:secret"),
    "right password, trailing bytes": b"Basic " + base64.b64encode(b"prometheus:secret") + b"\xff",
    "empty": b"",
}


@pytest.mark.parametrize("header", HOSTILE_AUTHORIZATION.values(), ids=HOSTILE_AUTHORIZATION)
def test_metrics_answer_any_authorization_bytes_with_401(client, settings, header):
    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    response = client.get("/metrics", HTTP_AUTHORIZATION=header.decode("latin-1"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="metrics"'


def test_metrics_answer_text_no_wire_could_carry_with_401(client, settings):
    """Characters beyond latin-1 cannot come from a real request, but must not break the view either."""
    settings.METRICS_BASIC_AUTH = "prometheus:s\u20accret"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic \u20ac").status_code == 401


def test_metrics_take_non_ascii_credentials_and_any_scheme_case(client, settings, monkeypatch):
    monkeypatch.setattr(metrics, "SOURCES", {})  # only the authentication here
    settings.METRICS_BASIC_AUTH = "prom\u00e9th\u00e9e:\u20ac"
    given = "basic " + base64.b64encode("prom\u00e9th\u00e9e:\u20ac".encode()).decode()
    assert client.get("/metrics", HTTP_AUTHORIZATION=given).status_code == 200


def test_canary_logs_an_error_when_a_queue_breaches_its_sla(caplog):
    import time

    from ..tasks import probe_queue_latency

    metrics.store().delete(metrics.LATENCY)
    waited = probe_queue_latency("high", time.time() - 5)  # sent 5 s ago; the SLA is 1 s

    assert waited >= 5
    assert metrics.latencies()["high"] >= 5
    assert "queue high breached its SLA" in caplog.text
    assert any(record.levelname == "ERROR" for record in caplog.records)


def test_a_canary_that_cannot_reach_redis_logs_and_leaves_no_dead_letter(monkeypatch, caplog, db):
    """A Redis restart while the probe writes its sample loses that sample, nothing more."""
    from ..tasks import probe_queue_latency

    monkeypatch.setattr(metrics, "store", lambda: redis.Redis(port=closed_port(), socket_connect_timeout=0.2))
    result = probe_queue_latency.apply(("high", time.time() - 0.1), throw=False)

    assert result.successful()
    assert result.get() >= 0.1
    assert "queue high: latency sample lost" in caplog.text
    assert not FailedTask.objects.exists()
