import csv
import logging
import tempfile

from celery import shared_task
from django.core.files import File
from django.utils import timezone

from .models import ExportJob, Transaction

logger = logging.getLogger(__name__)

BATCH_SIZE = 5000
HEADER = ["id", "created_at", "amount", "currency", "description"]


@shared_task
def generate_csv_export(export_job_id: int) -> str:
    """Write the user's transactions to a CSV file in storage.

    Routed to "export", whose pool allows 30 minutes. Reads in keyset batches
    ordered by primary key (``id > last``), never OFFSET and never the whole
    queryset, and streams rows to a temporary file, so memory stays flat however
    many rows there are. Idempotent: a completed job is not rewritten.
    """
    job = ExportJob.objects.filter(pk=export_job_id).first()
    if job is None:
        logger.warning("export: job %s does not exist", export_job_id)
        return "missing"
    if job.status == ExportJob.Status.COMPLETED:
        return "already-completed"

    rows = Transaction.objects.filter(user_id=job.user_id).order_by("pk")
    job.status = ExportJob.Status.RUNNING
    job.started_at = timezone.now()
    job.total_rows = rows.count()
    job.processed_rows = 0
    job.save(update_fields=["status", "started_at", "total_rows", "processed_rows"])

    last_key = 0
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        while True:
            batch = list(rows.filter(pk__gt=last_key).values_list(*HEADER)[:BATCH_SIZE])
            if not batch:
                break
            writer.writerows(batch)
            last_key = batch[-1][0]
            job.processed_rows += len(batch)
            job.last_key = last_key
            job.save(update_fields=["processed_rows", "last_key"])
        handle.seek(0)
        job.file.save(f"transactions-{job.pk}.csv", File(handle), save=False)

    job.status = ExportJob.Status.COMPLETED
    job.finished_at = timezone.now()
    job.save(update_fields=["file", "status", "finished_at"])
    logger.info("export: job %s wrote %s rows", job.pk, job.processed_rows)
    return "completed"
