"""Sent outbox rows are deleted after OUTBOX_RETENTION_DAYS; unsent ones never."""

from datetime import timedelta

from django.core.management import call_command
from django.utils import timezone

from config.celery_app import app

from .. import tasks
from ..models import OutboxMessage
from ..tasks import prune_sent_messages

ENTRY = "outbox-cleanup"


def message(sent_days_ago: float | None, created_days_ago: float = 30) -> OutboxMessage:
    now = timezone.now()
    row = OutboxMessage.objects.create(task_name="some.task", queue="default")
    sent_at = None if sent_days_ago is None else now - timedelta(days=sent_days_ago)
    OutboxMessage.objects.filter(pk=row.pk).update(created_at=now - timedelta(days=created_days_ago), sent_at=sent_at)
    return row


def test_cleanup_deletes_old_sent_rows_and_keeps_the_rest(db, settings, monkeypatch, capsys):
    retention = settings.OUTBOX_RETENTION_DAYS
    for _ in range(3):
        message(sent_days_ago=retention + 1)
    kept = [
        message(sent_days_ago=retention - 1).pk,  # sent recently
        message(sent_days_ago=None).pk,  # never sent, however old: the relay still owes it
    ]
    monkeypatch.setattr(tasks, "PRUNE_BATCH_SIZE", 2)  # several batches

    call_command("scheduled", "run", ENTRY, "--dry-run")
    assert "would act on 3" in capsys.readouterr().out
    assert OutboxMessage.objects.count() == 5
    call_command("scheduled", "run", ENTRY)
    assert "acted on 3" in capsys.readouterr().out

    assert list(OutboxMessage.objects.values_list("pk", flat=True)) == kept


def test_cleanup_runs_nightly_on_the_low_queue(settings):
    entry = settings.CELERY_BEAT_SCHEDULE[ENTRY]
    assert entry["task"] == prune_sent_messages.name
    assert entry["options"]["queue"] == "low"
    assert app.amqp.router.route({}, prune_sent_messages.name)["queue"].name == "low"
