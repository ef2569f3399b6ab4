"""Scheduled jobs as commands (the cron alternative), housekeeping tasks, and /metrics."""

import base64
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import cleanup_expired_exports
from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage
from {{ cookiecutter.project_slug }}.payments.models import Order
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment, reconcile_stuck_payments

from .. import metrics


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


def test_metrics_export_latency_sla_and_task_outcomes(client, settings, monkeypatch):
    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    # The broker's own answer is tested against real queues in tests/test_broker_integration.py.
    monkeypatch.setattr(metrics, "queue_depths", lambda: {"export": 3})
    store = metrics.store()
    store.delete(metrics.RUNS, metrics.SECONDS, metrics.LATENCY)
    metrics.record_latency("high", 0.25)
    metrics.record_task("demo.tasks.example", "success", 0.5)

    response = client.get("/metrics", HTTP_AUTHORIZATION=basic("prometheus:secret"))

    body = response.content.decode()
    assert response.status_code == 200
    assert 'celery_queue_latency_seconds{queue="high"} 0.25' in body
    assert 'celery_queue_sla_seconds{queue="high"} 1.0' in body
    assert 'celery_queue_depth{queue="export"} 3.0' in body
    assert 'celery_task_runs_total{outcome="success",task="demo.tasks.example"} 1.0' in body


def test_canary_logs_an_error_when_a_queue_breaches_its_sla(caplog):
    import time

    from ..tasks import probe_queue_latency

    metrics.store().delete(metrics.LATENCY)
    waited = probe_queue_latency("high", time.time() - 5)  # sent 5 s ago; the SLA is 1 s

    assert waited >= 5
    assert metrics.latencies()["high"] >= 5
    assert "queue high breached its SLA" in caplog.text
    assert any(record.levelname == "ERROR" for record in caplog.records)
