import logging
import os
import signal
import threading
from contextlib import contextmanager
from datetime import timedelta

from billiard.common import TERM_SIGNAL
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_revoked
from celery.utils.time import get_exponential_backoff_interval
from celery.worker import state as worker_state
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, connections
from django.utils import timezone

from ..core.task_base import BaseTask
from .csv_export import Cancelled, ExportRunner, LeaseLost
from .models import ExportJob

logger = logging.getLogger(__name__)

# Errors worth another attempt from the checkpoint: storage hiccups (a full or
# unmounted disk, a network timeout: OSError and its subclasses). A lost database
# connection is retried by BaseTask. Add your storage's own transient errors
# (with S3, botocore's BotoCoreError). Anything else fails the job at once.
TRANSIENT_ERRORS = (OSError,)


def retry_hold() -> timedelta:
    """How long a job waiting for its retry is kept from the watchdog: the longest backoff, plus a lease.

    Its lease is released (the retry is a new runner) but not expired, so the
    watchdog does not send a second copy that would run beside the retry.
    """
    return timedelta(seconds=settings.TASK_RETRY_POLICY["retry_backoff_max"]) + ExportJob.lease_duration()


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


# --8<-- [start:export-task]
class ExportTask(BaseTask):
    """BaseTask, plus: an export that fails for good is marked FAILED, with one dead letter."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Retries exhausted, or an error not worth retrying: the job is FAILED, and the watchdog leaves it alone.

        Only the call whose conditional UPDATE moved the job to FAILED writes
        the dead letter: a job that already ended (cancelled, or failed by a
        duplicate message) gets no second one.
        """
        job_id = args[0] if args else kwargs.get("export_job_id")
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            failed_now = ExportJob.mark_failed(job_id, reason)
            if failed_now:
                ExportRunner.delete_parts(ExportJob(pk=job_id))
        except Exception:
            logger.exception("export %s: could not mark the job failed", job_id)
            failed_now = True  # could not tell: keep the dead letter rather than lose it
        if failed_now:
            logger.error("export %s failed for good: %s", job_id, reason)
            super().on_failure(exc, task_id, args, kwargs, einfo)
        else:
            logger.info("export %s had already ended; no dead letter for %s", job_id, task_id)
            # --8<-- [end:export-task]


# --8<-- [start:generate-csv-export]
@shared_task(bind=True, base=ExportTask)
def generate_csv_export(self, export_job_id: int) -> str:
    """Export a user's transactions to CSV; resumable, memory-flat, one runner at a time.

    Routed to "export" (30-minute limit, one process per worker). The engine is
    in ``csv_export.py``. A missing job is logged and the task ends; a finished
    job (completed, failed, cancelled) is left as it is; a job another live
    runner holds is left to it. A transient error is retried from the
    checkpoint; anything else, or the last retry, fails the job (ExportTask).
    """
    job = ExportJob.objects.filter(pk=export_job_id).first()
    if job is None:
        logger.warning("export: job %s does not exist", export_job_id)
        return "missing"
    if job.status == ExportJob.Status.COMPLETED:
        return "already-completed"
    if not job.is_active:
        logger.info("export %s: %s, not running it", job.pk, job.status)
        return job.status
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
        except Cancelled:
            # The user cancelled: stop here, free the lease and the disk. Not a
            # failure, so no retry and no dead letter.
            ExportJob.release(export_job_id, runner.owner)
            ExportRunner.delete_parts(job)
            logger.info("export %s: cancelled, stopped at a batch boundary", export_job_id)
            return "cancelled"
        except SoftTimeLimitExceeded:
            # Out of time, not out of progress: continue from the checkpoint.
            ExportJob.release(export_job_id, runner.owner, hold=retry_hold())
            raise self.retry(countdown=1) from None
        except Exception as error:
            # If the database connection broke, these writes would fail on it too
            # and the lease would stay taken until it expires. Reconnect first:
            # the retry (core/task_base.py) then resumes from the checkpoint at once.
            if not self.request.is_eager:  # run eagerly, it is the caller's connection
                close_old_connections()
            ExportJob.release(export_job_id, runner.owner, hold=retry_hold())
            ExportJob.objects.filter(pk=export_job_id).update(error=f"{type(error).__name__}: {error}"[:2000])
            if isinstance(error, TRANSIENT_ERRORS):
                countdown = get_exponential_backoff_interval(
                    self.retry_backoff, self.request.retries, self.retry_backoff_max, self.retry_jitter
                )
                # The last retry re-raises the error: ExportTask.on_failure then fails the job.
                raise self.retry(exc=error, countdown=countdown) from error
            raise
    logger.info("export %s: %s rows, %s bytes in %s", job.pk, job.processed_rows, job.bytes_written, job.file.name)
    return "completed"
    # --8<-- [end:generate-csv-export]


# --8<-- [start:revoked]
@task_revoked.connect
def cancel_revoked_export(sender=None, request=None, terminated=False, expired=False, **kwargs):
    """An operator revoked an export's task (Flower, ``celery control revoke``): the export is CANCELLED.

    Celery sends ``task_revoked`` in the worker's main process when it drops a
    revoked message instead of running it, and when it terminates the process
    running a task (``terminate=True``). Neither stops the *export*: left queued
    or running, the watchdog sends it again within a minute, and the pool
    ignores SIGTERM, Celery's default signal, in its children (REMAP_SIGTERM,
    config/worker.py), so a terminated export even ran to the end. Cancelled,
    it is finished, as if its owner had cancelled it: never sent again; a runner
    still alive stops at its next checkpoint and deletes its file; one killed
    outright (SIGKILL) leaves its lease to the watchdog, which frees it (and any
    part) once it expires. A message that merely expired is no one's cancel:
    the watchdog sends that job again. A plain revoke does nothing to a task
    already running (Celery's rule): cancel that one from its page, or terminate it.
    """
    if expired or getattr(sender, "name", None) != generate_csv_export.name:
        return
    if request.id not in worker_state.revoked:
        # Terminated by the worker itself, not revoked by anyone: Celery cancels the
        # running tasks when it loses its broker connection (a Redis restart) and
        # reports them the same way. The export is handed back and resumes.
        return
    job_id = request.args[0] if request.args else request.kwargs["export_job_id"]
    close_old_connections()  # the main process runs no tasks: its connection may be long dead
    try:
        if ExportJob.cancel(job_id):
            ExportRunner.delete_parts(ExportJob(pk=job_id))
            how = "revoked and terminated" if terminated else "revoked"
            logger.warning("export %s: its task %s was %s: export cancelled", job_id, request.id, how)
    finally:
        if not connection.in_atomic_block:  # called from a test's transaction, it is the test's
            connection.close()  # and not held open by a process that rarely needs one
    # --8<-- [end:revoked]


# --8<-- [start:watchdog]
@shared_task
def export_watchdog(dry_run: bool = False) -> list[int]:
    """Re-dispatch exports whose runner died (its lease expired). Run every minute by beat.

    With Redis, a SIGKILLed worker's message only comes back after the visibility
    timeout (an hour); this brings the job back within a lease plus a minute.
    A duplicate dispatch is harmless: only one runner gets the lease. Failed and
    cancelled jobs are finished (``ExportJob.stale()``): never sent again, but
    one whose runner died before it noticed the end still holds that runner's
    lease (and any part it wrote after the cancel). Nobody else would ever free
    them: the watchdog does.
    """
    stale = list(ExportJob.stale().values_list("pk", flat=True))
    for pk in [] if dry_run else stale:
        logger.warning("export watchdog: job %s has no live runner, re-dispatching", pk)
        generate_csv_export.delay(pk)
    for job in [] if dry_run else ExportJob.abandoned():
        # Only the dead runner's lease is released: a runner that wakes up now finds
        # the job ended at its next checkpoint and tidies up too (both idempotent).
        if ExportJob.release(job.pk, job.lease_owner):
            ExportRunner.delete_parts(job)
            logger.warning("export watchdog: job %s is %s, its runner died; lease and parts freed", job.pk, job.status)
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
