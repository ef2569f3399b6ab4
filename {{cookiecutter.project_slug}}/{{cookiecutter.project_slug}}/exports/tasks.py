import logging
import os
import signal
from contextlib import contextmanager

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from .csv_export import ExportRunner, LeaseLost, StopRequested
from .models import ExportJob

logger = logging.getLogger(__name__)


@contextmanager
def stop_requested_on_sigterm():
    """Turn SIGTERM into a flag the runner checks between batches.

    On shutdown Celery cancels running tasks by sending SIGTERM to the pool
    process (after the pool's soft-shutdown timeout). Dying mid-batch would be
    safe, but the job's lease would stay held until it expires. With the flag the
    runner finishes its batch, releases the lease, and then dies as Celery
    intended, so the message Celery hands back can be resumed at once.
    """
    state = {"stop": False}

    def request_stop(signum, frame):
        state["stop"] = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield lambda: state["stop"]
    finally:
        signal.signal(signal.SIGTERM, previous)


@shared_task(bind=True)
def generate_csv_export(self, export_job_id: int) -> str:
    """Export a user's transactions to CSV; resumable, memory-flat, one runner at a time.

    Routed to "export" (30-minute limit, one process per worker). The engine is
    in ``csv_export.py``. A missing job is logged and the task ends; a completed
    job is not rewritten; a job another live runner holds is left to it.
    """
    job = ExportJob.objects.filter(pk=export_job_id).first()
    if job is None:
        logger.warning("export: job %s does not exist", export_job_id)
        return "missing"
    if job.status == ExportJob.Status.COMPLETED:
        return "already-completed"
    runner = ExportRunner(job.pk)
    if not ExportJob.claim(job.pk, runner.owner):
        logger.info("export %s: another runner holds the lease", job.pk)
        return "leased-elsewhere"

    with stop_requested_on_sigterm() as should_stop:
        runner.should_stop = should_stop
        try:
            job = runner.run()
        except LeaseLost:
            logger.warning("export %s: lease lost, another runner continues", export_job_id)
            return "lease-lost"
        except StopRequested:
            # Hand the job back: release the lease, then die the way Celery's
            # cancellation meant us to. The message is requeued, not acked.
            ExportJob.release(export_job_id, runner.owner)
            logger.info("export %s: stopped at its checkpoint for shutdown", export_job_id)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            raise
        except SoftTimeLimitExceeded:
            # Out of time, not out of progress: continue from the checkpoint.
            ExportJob.release(export_job_id, runner.owner)
            raise self.retry(countdown=1) from None
        except Exception as error:
            ExportJob.release(export_job_id, runner.owner)
            ExportJob.objects.filter(pk=export_job_id).update(error=f"{type(error).__name__}: {error}"[:2000])
            raise
    logger.info("export %s: %s rows, %s bytes in %s", job.pk, job.processed_rows, job.bytes_written, job.file.name)
    return "completed"


@shared_task
def export_watchdog() -> list[int]:
    """Re-dispatch exports whose runner died (its lease expired). Run every minute by beat.

    With Redis, a SIGKILLed worker's message only comes back after the visibility
    timeout (an hour); this brings the job back within a lease plus a minute.
    A duplicate dispatch is harmless: only one runner gets the lease.
    """
    stale = list(ExportJob.stale().values_list("pk", flat=True))
    for pk in stale:
        logger.warning("export watchdog: job %s has no live runner, re-dispatching", pk)
        generate_csv_export.delay(pk)
    return stale
