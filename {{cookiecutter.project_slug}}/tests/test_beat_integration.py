"""Beat from the Procfile: schedules declared in code land in the database and fire.

The queue-latency canary runs every minute; within its interval every queue has
a latency sample, measured on the pool that consumes it, and /metrics shows them,
with the time of beat's last tick.
"""

import base64
import time

import pytest
from django_celery_beat.models import PeriodicTask

from {{ cookiecutter.project_slug }}.core import metrics

from .conftest import ROOT, start_process, stop_processes, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def beat(live_celery, tmp_path):
    # A stale pid file from a crashed beat must not stop the next one (beat here
    # runs without a pid file: compose guarantees there is only one).
    stale_pid = ROOT / "celerybeat.pid"
    stale_pid.write_text("999999\n")
    metrics.store().delete(metrics.LATENCY, metrics.BEAT_TICK)
    log = tmp_path / "beat.log"
    process = start_process("beat", live_celery.env, log)
    yield process, log
    stop_processes([process])
    stale_pid.unlink(missing_ok=True)


def test_schedules_are_synced_and_the_canary_fires_within_its_interval(beat, client, settings):
    from config import topology

    process, log = beat

    def synced():
        return set(settings.CELERY_BEAT_SCHEDULE) <= set(PeriodicTask.objects.values_list("name", flat=True))

    wait_for(synced, 30, "the schedule in the database")
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        row = PeriodicTask.objects.get(name=name)
        assert (row.task, row.queue, row.expire_seconds) == (
            entry["task"],
            entry["options"]["queue"],
            entry["options"]["expire_seconds"],
        )

    # crontab() fires at the next minute boundary: at most 60 s, plus the run.
    samples = wait_for(lambda: set(metrics.latencies()) >= set(topology.QUEUES) and metrics.latencies(), 90,
                       "a latency sample from every queue")  # fmt: skip
    assert process.poll() is None, log.read_text()
    assert all(0 <= seconds < 30 for seconds in samples.values()), samples

    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    auth = "Basic " + base64.b64encode(b"prometheus:secret").decode()
    probe_runs = 'task="{{ cookiecutter.project_slug }}.core.tasks.probe_queue_latency"'

    def scrape() -> str | None:
        # The probes' run counters reach Redis with their pool child's next flush (once a second).
        body = client.get("/metrics", HTTP_AUTHORIZATION=auth).content.decode()
        return body if probe_runs in body else None

    body = wait_for(scrape, 10, "the probes' runs in /metrics")
    for queue in topology.QUEUES:
        assert 'celery_queue_latency_seconds{queue="' + queue + '"}' in body


def test_beat_stamps_its_ticks_for_metrics(beat, client, settings):
    from {{ cookiecutter.project_slug }}.core.beat import BEAT_TICK_STAMP_INTERVAL

    process, log = beat
    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    auth = "Basic " + base64.b64encode(b"prometheus:secret").decode()

    def last_tick() -> float | None:
        body = client.get("/metrics", HTTP_AUTHORIZATION=auth).content.decode()
        lines = [line for line in body.splitlines() if line.startswith("celery_beat_tick_timestamp_seconds ")]
        return float(lines[0].split()[1]) if lines else None

    first = wait_for(last_tick, 30, "beat's first tick in /metrics")
    assert time.time() - first < 30, log.read_text()
    # Beat ticks at least every 5 s (DatabaseScheduler's max_interval): the stamp moves on.
    wait_for(lambda: (last_tick() or 0) > first, 3 * BEAT_TICK_STAMP_INTERVAL + 5, "a later tick")
    assert process.poll() is None, log.read_text()
