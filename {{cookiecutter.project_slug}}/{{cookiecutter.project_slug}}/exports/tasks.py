import logging
import os
import signal
import threading
from contextlib import contextmanager
from datetime import timedelta

from billiard.common import TERM_SIGNAL
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections
from django.utils import timezone

from .csv_export import ExportRunner, LeaseLost
from .models import ExportJob

logger = logging.getLogger(__name__)


# --8<-- [start:hand-back]
@contextmanager
def hand_back_on_termination(job_id: int, owner: str):
    """When the pool terminates this task, release the job's lease before dying.

    On shutdown Celery cancels running tasks by signalling the pool process
    (after the pool's soft-shutdown timeout) and hands their messages
    back to the broker. Dying mid-batch is safe (the unfinished part is never
    checkpointed), but the lease would stay held until it expires, so the
    requeued message could not resume the job at once. The handler releases it
    on a connection of its own (the task's connection may be mid-query), then
    dies the way Celery meant.
    """

    def release_and_die(signum, frame):
        connection = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {ExportJob._meta.db_table} SET lease_owner = '', lease_expires_at = NULL "  # noqa: S608
                    "WHERE id = %s AND lease_owner = %s",
                    [job_id, owner],
                )
        finally:
            connection.close()
        logger.info("export %s: stopped for shutdown, lease released for the next runner", job_id)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # run eagerly from a thread (e.g. a dev server): no signals to catch
        return
    # The signal billiard uses to terminate a job: SIGTERM, or SIGQUIT when
    # REMAP_SIGTERM=SIGQUIT (which config/worker.py sets).
    previous = signal.signal(TERM_SIGNAL, release_and_die)
    try:
        yield
    finally:
        signal.signal(TERM_SIGNAL, previous)
        # --8<-- [end:hand-back]


# --8<-- [start:generate-csv-export]
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

    with hand_back_on_termination(job.pk, runner.owner):
        try:
            job = runner.run()
        except LeaseLost:
            logger.warning("export %s: lease lost, another runner continues", export_job_id)
            return "lease-lost"
        except SoftTimeLimitExceeded:
            # Out of time, not out of progress: continue from the checkpoint.
            ExportJob.release(export_job_id, runner.owner)
            raise self.retry(countdown=1) from None
        except Exception as error:
            # If the database connection broke, these writes would fail on it too
            # and the lease would stay taken until it expires. Reconnect first:
            # the retry (core/task_base.py) then resumes from the checkpoint at once.
            close_old_connections()
            ExportJob.release(export_job_id, runner.owner)
            ExportJob.objects.filter(pk=export_job_id).update(error=f"{type(error).__name__}: {error}"[:2000])
            raise
    logger.info("export %s: %s rows, %s bytes in %s", job.pk, job.processed_rows, job.bytes_written, job.file.name)
    return "completed"
    # --8<-- [end:generate-csv-export]


# --8<-- [start:watchdog]
@shared_task
def export_watchdog(dry_run: bool = False) -> list[int]:
    """Re-dispatch exports whose runner died (its lease expired). Run every minute by beat.

    With Redis, a SIGKILLed worker's message only comes back after the visibility
    timeout (an hour); this brings the job back within a lease plus a minute.
    A duplicate dispatch is harmless: only one runner gets the lease.
    """
    stale = list(ExportJob.stale().values_list("pk", flat=True))
    for pk in [] if dry_run else stale:
        logger.warning("export watchdog: job %s has no live runner, re-dispatching", pk)
        generate_csv_export.delay(pk)
    return stale
    # --8<-- [end:watchdog]


@shared_task
def cleanup_expired_exports(dry_run: bool = False) -> list[int]:
    """Delete exports (and their files) older than EXPORT_RETENTION_DAYS. Beat, daily, on "low"."""
    cutoff = timezone.now() - timedelta(days=settings.EXPORT_RETENTION_DAYS)
    expired = ExportJob.objects.filter(created_at__lt=cutoff)
    ids = list(expired.values_list("pk", flat=True))
    if not dry_run:
        for job in expired:
            if job.file:
                job.file.delete(save=False)
            ExportRunner.delete_parts(job)
            job.delete()
        logger.info("export cleanup: deleted %s jobs older than %s", len(ids), cutoff)
    return ids
