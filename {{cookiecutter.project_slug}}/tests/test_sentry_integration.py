"""Sentry, end to end: what real worker pools and a real beat send to Sentry's ingest endpoint.

A local HTTP server stands in for Sentry (the DSN points at it) and keeps every
envelope it receives, as Sentry would. The pools are restarted with that DSN, and
put back without one afterwards.
"""

import gzip
import json
import signal
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from config.celery_app import app as celery_app

from .conftest import start_process, stop_processes, wait_for

pytestmark = pytest.mark.integration

SENTRY_POOLS = ("worker-high", "worker-default")
SECRETS = {"card_token": "tok_4242SECRET", "password": "hunter2-SECRET", "customer_email": "ada.secret@example.org"}


class Ingest(ThreadingHTTPServer):
    """Sentry's envelope endpoint, in-process: every item it receives, as (type, payload)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), IngestHandler)
        self.items: list[tuple[str, dict]] = []
        self.raw: list[bytes] = []  # every body as it arrived, for "no secret anywhere"

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server_port}/1"

    def events(self) -> list[dict]:
        return [payload for kind, payload in self.items if kind == "event"]

    def check_ins(self, slug: str) -> list[dict]:
        return [payload for kind, payload in self.items if kind == "check_in" and payload["monitor_slug"] == slug]


class IngestHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.raw.append(body)
        self.server.items.extend(parse_envelope(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format, *args):
        pass  # quiet: pytest shows the assertions


def parse_envelope(body: bytes) -> list[tuple[str, dict]]:
    """Sentry's envelope format: a header line, then per item a header line and its payload."""
    _header, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        item_header, _, rest = rest.partition(b"\n")
        item = json.loads(item_header)
        if "length" in item:
            payload, rest = rest[: item["length"]], rest[item["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item["type"], json.loads(payload) if payload.startswith(b"{") else {}))
    return items


@pytest.fixture
def ingest():
    server = Ingest()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sentry_pools(live_celery, ingest):
    """worker-high and worker-default reporting to ``ingest``; restarted without a DSN afterwards."""
    for name in SENTRY_POOLS:
        live_celery.kill(name, signal.SIGTERM)
        live_celery.restart(name, SENTRY_DSN=ingest.dsn, CELERY_TEST_TASK_MODULES="tests.sentry_tasks")
    yield live_celery
    for name in SENTRY_POOLS:
        live_celery.kill(name, signal.SIGTERM)
        live_celery.restart(name, SENTRY_DSN="", CELERY_TEST_TASK_MODULES="")


# --8<-- [start:task-event]
def test_a_failing_task_reaches_sentry_tagged_with_its_queue_and_without_its_secrets(sentry_pools, ingest):
    result = celery_app.send_task(
        "tests.sentry_tasks.charge_card", kwargs={"order_ref": "A-17", **SECRETS}, queue="high"
    )

    def reported():
        return [event for event in ingest.events() if event.get("tags", {}).get("celery_task_id") == result.id]

    event = wait_for(reported, 60, "the task's error event at the ingest endpoint")[0]
    [exception] = event["exception"]["values"]
    assert exception["type"] == "CardRejected"
    assert exception["value"] == "the provider rejected the card of order A-17"
    assert event["tags"]["celery_task"] == "tests.sentry_tasks.charge_card"
    assert event["tags"]["celery_queue"] == "high"
    assert event["environment"] == "test"
    # The task's own frame is there, its parameters by name, the secrets replaced.
    frame = exception["stacktrace"]["frames"][-1]
    assert frame["function"] == "charge_card"
    assert frame["vars"]["order_ref"] == "'A-17'"
    assert {frame["vars"][name] for name in SECRETS} == {"[Filtered]"}
    # Nothing of them anywhere in what was sent: kwargs, frames, breadcrumbs, extras.
    sent = b"".join(ingest.raw).decode()
    assert not [secret for secret in SECRETS.values() if secret in sent]
    # One event per failure: the run log's ERROR line (written after the result, and
    # sent within milliseconds on this machine) does not report it again.
    result.get(timeout=30, propagate=False)
    time.sleep(2)
    assert len(reported()) == 1
    # --8<-- [end:task-event]


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
