"""Exports survive their worker: SIGKILL, SIGTERM, and a second runner, on real pools.

Each interrupted export must end byte-identical to a clean export of the same
rows, having resumed from its checkpoint rather than starting over. And an
export an operator revokes stays stopped.
"""

import signal
import time

import pytest
from django.conf import settings

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.exports.csv_export import ExportRunner
from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import export_watchdog, generate_csv_export

from .conftest import DEMO_ROWS, wait_for

pytestmark = pytest.mark.integration
ROWS = DEMO_ROWS  # the demo fixture's transactions (conftest.py)


def clean_export(user) -> bytes:
    """The reference: the same rows exported in one go, in this process."""
    job = ExportJob.objects.create(user=user)
    runner = ExportRunner(job.pk)
    assert ExportJob.claim(job.pk, runner.owner)
    with runner.run().file.open("rb") as handle:
        return handle.read()


def progress(job) -> float:
    job.refresh_from_db()
    return job.processed_rows / ROWS


def finished(job) -> ExportJob | None:
    job.refresh_from_db()
    return job if job.status == ExportJob.Status.COMPLETED else None


def taken_over(job, dead_runner: str) -> bool:
    """A live runner holds the job's lease (not the dead one, and not nobody)."""
    job.refresh_from_db()
    return job.lease_owner not in ("", dead_runner)


def runners(job) -> list[str]:
    """The lease owners that wrote the job's parts, in order of writing."""
    owners = [name.rsplit("-", 1)[1].removesuffix(".csv") for name in job.parts]
    return list(dict.fromkeys(owners))


def test_sigkill_at_40_percent_resumes_via_the_watchdog(live_celery, demo):
    job = ExportJob.objects.create(user=demo)
    generate_csv_export.delay(job.pk)
    wait_for(lambda: progress(job) >= 0.4, message="40% of the export")

    dead_runner = ExportJob.objects.get(pk=job.pk).lease_owner
    live_celery.kill("worker-export", signal.SIGKILL, whole_group=True)  # like the OOM killer
    done_when_killed = progress(job)
    live_celery.restart("worker-export")

    # Redis redelivers the message only after the visibility timeout (an hour).
    # RabbitMQ redelivers it at once, but while the dead runner's lease still
    # stands the task refuses the job, so it may not resume it either. The
    # watchdog notices the expired lease and re-dispatches the job.
    def stale():
        return ExportJob.stale().filter(pk=job.pk).exists()

    wait_for(lambda: stale() or taken_over(job, dead_runner), message="the lease to expire")
    if stale():
        redispatched = export_watchdog.delay().get(timeout=60)
        # Unless a redelivered message took the job over in the meantime (RabbitMQ).
        assert redispatched == [job.pk] or taken_over(job, dead_runner)

    job = wait_for(lambda: finished(job), message="the resumed export")
    with job.file.open("rb") as handle:
        assert handle.read() == clean_export(demo)
    assert 0.4 <= done_when_killed < 1
    assert len(runners(job)) == 2  # resumed by a second runner, not restarted from zero


def test_sigterm_at_40_percent_hands_the_job_back_at_once(live_celery, demo):
    job = ExportJob.objects.create(user=demo)
    generate_csv_export.delay(job.pk)
    wait_for(lambda: progress(job) >= 0.4, message="40% of the export")

    # What Docker sends on deploy. Soft shutdown: the export pool waits its 5 s,
    # then cancels the task, which stops at a batch boundary, releases its lease,
    # and its message goes back to the queue.
    live_celery.kill("worker-export", signal.SIGTERM)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.RUNNING
    assert job.lease_owner == ""  # handed back, not left for the watchdog
    live_celery.restart("worker-export")  # no watchdog: the requeued message resumes it

    job = wait_for(lambda: finished(job), message="the resumed export")
    with job.file.open("rb") as handle:
        assert handle.read() == clean_export(demo)
    assert len(runners(job)) == 2


def test_two_runners_racing_for_one_job_only_one_writes(live_celery, demo):
    job = ExportJob.objects.create(user=demo)
    generate_csv_export.delay(job.pk)
    wait_for(lambda: progress(job) > 0, message="the export to start")

    assert generate_csv_export.apply((job.pk,)).get() == "leased-elsewhere"  # a second runner, here

    job = wait_for(lambda: finished(job), message="the export")
    assert len(runners(job)) == 1
    with job.file.open("rb") as handle:
        assert handle.read() == clean_export(demo)


def files_left(pools, job) -> list[str]:
    directory = pools.media_root / "exports" / str(job.pk)
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def ended(job, status) -> ExportJob | None:
    job.refresh_from_db()
    return job if job.status == status else None


# --8<-- [start:revoke]
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_revoked_export_is_cancelled_and_never_resumed(live_celery, demo, signal_name):
    job = ExportJob.objects.create(user=demo)
    running = generate_csv_export.delay(job.pk)
    queued_job = ExportJob.objects.create(user=demo)
    queued = generate_csv_export.delay(queued_job.pk)  # behind it: the export pool runs one task at a time
    wait_for(lambda: progress(job) >= 0.2, message="20% of the export")

    # What an operator does: Flower's Revoke and Terminate buttons, `celery control
    # revoke [--terminate --signal ...]`. Terminate sends SIGTERM unless told otherwise.
    control = generate_csv_export.app.control
    control.revoke(queued.id)
    control.revoke(running.id, terminate=True, signal=signal_name)

    job = wait_for(lambda: ended(job, ExportJob.Status.CANCELLED), 30, "the revoked export to be cancelled")
    # The queued one, dropped by the pool when its turn came, is cancelled too.
    wait_for(lambda: ended(queued_job, ExportJob.Status.CANCELLED), 30, "the revoked queued export")
    written = progress(job)
    time.sleep(settings.EXPORT_LEASE_SECONDS + 1)  # a SIGKILLed runner's lease expires

    # Nothing sends either again; the watchdog frees a killed runner's lease and files.
    assert export_watchdog.delay().get(timeout=60) == []
    job.refresh_from_db()
    assert (job.status, progress(job), job.lease_owner) == (ExportJob.Status.CANCELLED, written, "")
    assert written < 1  # stopped, not run to the end
    assert files_left(live_celery, job) == []
    assert not FailedTask.objects.exists()  # an operator's decision, not a failure
    # --8<-- [end:revoke]
