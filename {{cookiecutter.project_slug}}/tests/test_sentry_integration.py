"""Sentry, end to end: what real worker pools and a real beat send to Sentry's ingest endpoint.

A local HTTP server stands in for Sentry (the DSN points at it) and keeps every
envelope it receives, as Sentry would. The pools are restarted with that DSN, and
put back without one afterwards.
"""

import json
import signal
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from config.celery_app import app as celery_app

from .conftest import publish_raw, start_process, stop_processes, wait_for

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.sentry_ingest"]  # the ingest fixture

SENTRY_POOLS = ("worker-high", "worker-default")
SECRETS = {"card_token": "tok_4242SECRET", "password": "hunter2-SECRET", "customer_email": "ada.secret@example.org"}


@pytest.fixture
def sentry_pools(live_celery, ingest):
    """worker-high and worker-default reporting to ``ingest``; restarted without a DSN afterwards."""
    for name in SENTRY_POOLS:
        live_celery.kill(name, signal.SIGTERM)
        live_celery.restart(
            name,
            SENTRY_DSN=ingest.dsn,
            SENTRY_TRACES_SAMPLE_RATE="1.0",  # every task's transaction is sent too
            CELERY_TEST_TASK_MODULES="tests.sentry_tasks",
        )
    yield live_celery
    for name in SENTRY_POOLS:
        live_celery.kill(name, signal.SIGTERM)
        live_celery.restart(name, SENTRY_DSN="", CELERY_TEST_TASK_MODULES="")


# --8<-- [start:task-event]
@pytest.mark.parametrize("call", ["keyword", "positional"])
def test_a_failing_task_reaches_sentry_tagged_with_its_queue_and_without_its_secrets(sentry_pools, ingest, call):
    arguments = {"order_id": 17, "order_ref": "A-17", **SECRETS}
    if call == "keyword":
        result = celery_app.send_task("tests.sentry_tasks.charge_card", kwargs=arguments, queue="high")
    else:
        result = celery_app.send_task("tests.sentry_tasks.charge_card", args=list(arguments.values()), queue="high")

    def reported():
        return [event for event in ingest.events() if event.get("tags", {}).get("celery_task_id") == result.id]

    event = wait_for(reported, 60, "the task's error event at the ingest endpoint")[0]
    [exception] = event["exception"]["values"]
    assert exception["type"] == "CardRejected"
    # The message the code wrote, the email address in it replaced.
    assert exception["value"] == "the provider rejected the card of order A-17 for [email]"
    assert event["tags"]["celery_task"] == "tests.sentry_tasks.charge_card"
    assert event["tags"]["celery_queue"] == "high"
    assert event["environment"] == "test"
    # The task's own frame is there, with the one local variable that is a number.
    frame = exception["stacktrace"]["frames"][-1]
    assert frame["function"] == "charge_card"
    assert frame["vars"] == {"order_id": "17"}  # sentry-sdk sends variables as their reprs
    # Nothing of them anywhere in what was sent: arguments, frames, breadcrumbs, extras.
    sent = b"".join(ingest.raw).decode()
    assert not [secret for secret in SECRETS.values() if secret in sent]
    # One event per failure: the run log's ERROR line (written after the result, and
    # sent within milliseconds on this machine) does not report it again.
    result.get(timeout=30, propagate=False)
    time.sleep(2)
    assert len(reported()) == 1
    # --8<-- [end:task-event]


def test_a_retried_task_sends_no_secret_in_its_retry_failure_or_transactions(sentry_pools, ingest):
    secrets = [SECRETS["card_token"], SECRETS["customer_email"]]
    result = celery_app.send_task("tests.sentry_tasks.refund_card_later", args=[17, *secrets], queue="high")

    def reported():
        return [event for event in ingest.events() if event.get("tags", {}).get("celery_task_id") == result.id]

    event = wait_for(reported, 60, "the error event after the retry")[0]
    assert event["exception"]["values"][-1]["value"] == "the refund of order 17 to [email] failed"

    def transactions():
        runs = [p for kind, p in ingest.items if kind == "transaction" and "refund_card_later" in str(p)]
        return len(runs) >= 2 and runs  # the first run and the retry

    wait_for(transactions, 30, "the transactions of both runs")
    sent = b"".join(ingest.raw).decode()
    assert not [secret for secret in secrets if secret in sent]


def test_a_poison_message_reaches_sentry_without_its_body(sentry_pools, ingest):
    """Celery's consumer logs an unknown task's body at ERROR, and the project's poison
    handling logs what it records: the events carry the log templates, not the body."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[17, *SECRETS.values()], {"note": SECRETS["customer_email"]}, {}]).encode()
    headers = {"lang": "py", "task": "tests.sentry_tasks.refund_card", "id": task_id, "root_id": task_id}
    publish_raw("high", body, "application/json", headers)

    def logged(template: str):
        return lambda: [e for e in ingest.events() if e.get("logentry", {}).get("message", "").startswith(template)]

    # Celery's line, with the task's name in its exception, and the project's line.
    event = wait_for(logged("Received unregistered task of type"), 60, "Celery's error event")[0]
    assert "tests.sentry_tasks.refund_card" in json.dumps(event["exception"])
    event = wait_for(logged("poison message on queue"), 60, "the poison message's error event")[0]
    assert event["logentry"]["params"][-1] > 0  # the PoisonMessage's id, for the operator
    sent = b"".join(ingest.raw).decode()
    assert not [secret for secret in SECRETS.values() if secret in sent]


@pytest.fixture
def start_beat(sentry_pools, ingest, tmp_path):
    """Start beat from the Procfile, reporting to ``ingest``; stopped after the test."""
    started = []

    def start():
        log = tmp_path / "beat.log"
        started.append(start_process("beat", sentry_pools.env | {"SENTRY_DSN": ingest.dsn}, log))
        return started[-1], log

    yield start
    stop_processes(started)


def overdue(name: str) -> None:
    """Make the schedule entry ``name`` due now: its last run five minutes ago.

    Beat keeps ``last_run_at`` of entries already in the database when it syncs the
    schedule at start, so it sends this one at once instead of at the next minute.
    """
    PeriodicTask.objects.filter(name=name).update(last_run_at=timezone.now() - timedelta(minutes=5))


# --8<-- [start:check-ins]
def test_beat_schedules_report_check_ins_to_sentry_crons(start_beat, ingest):
    # A schedule from CELERY_BEAT_SCHEDULE whose task succeeds, and one whose task fails.
    probe = settings.CELERY_BEAT_SCHEDULE["queue-latency-probe"]
    ModelEntry.from_entry("queue-latency-probe", app=celery_app, **probe)
    every_minute, _ = CrontabSchedule.objects.get_or_create(minute="*", hour="*", timezone=settings.TIME_ZONE)
    PeriodicTask.objects.create(
        name="nightly-charge",
        task="tests.sentry_tasks.charge_card",
        crontab=every_minute,
        kwargs=json.dumps({"order_ref": "B-2", **SECRETS}),
        queue="high",
    )
    for name in ("queue-latency-probe", "nightly-charge"):
        overdue(name)
    process, log = start_beat()

    def outcome(slug):
        statuses = {}
        for check_in in ingest.check_ins(slug):
            statuses.setdefault(check_in["check_in_id"], set()).add(check_in["status"])
        return next((found for found in statuses.values() if found - {"in_progress"}), None)

    assert wait_for(lambda: outcome("queue-latency-probe"), 60, "the probe's check-ins", interval=0.5) == {
        "in_progress",
        "ok",
    }, log.read_text()
    assert wait_for(lambda: outcome("nightly-charge"), 60, "the failing schedule's check-ins", interval=0.5) == {
        "in_progress",
        "error",
    }, log.read_text()
    # The monitor is created from the check-ins: its schedule comes with them.
    schedules = [check_in["monitor_config"]["schedule"] for check_in in ingest.check_ins("nightly-charge")]
    assert schedules
    assert all(schedule == {"type": "crontab", "value": "* * * * *"} for schedule in schedules)
    assert process.poll() is None, log.read_text()
    # --8<-- [end:check-ins]
