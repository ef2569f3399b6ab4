import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from ..core.tasks import delete_in_batches
from .models import OutboxMessage

logger = logging.getLogger(__name__)

# Rows per DELETE: each batch is its own short transaction.
PRUNE_BATCH_SIZE = 10_000


# --8<-- [start:prune-sent-messages]
@shared_task
def prune_sent_messages(dry_run: bool = False) -> int:
    """Delete messages sent more than OUTBOX_RETENTION_DAYS ago (beat, nightly, on "low"); returns how many.

    Every task the site sends leaves a row: unpruned, the table grows by one row per
    checkout, reset and export for ever. A sent row is history (its task has run, or
    its own retries and dead letters took over), kept a while for operators who ask
    "was it sent, and when?". Unsent rows are never deleted, however old: they are
    work the relay still owes. Deleted in batches, so a first run over years of rows
    holds no long lock.
    """
    cutoff = timezone.now() - timedelta(days=settings.OUTBOX_RETENTION_DAYS)
    old = OutboxMessage.objects.filter(sent_at__lt=cutoff)
    if dry_run:
        return old.count()
    deleted = delete_in_batches(old, PRUNE_BATCH_SIZE)
    logger.info("outbox: deleted %s messages sent before %s", deleted, cutoff)
    return deleted
    # --8<-- [end:prune-sent-messages]
