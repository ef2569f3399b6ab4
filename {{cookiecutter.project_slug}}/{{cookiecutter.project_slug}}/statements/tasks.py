"""Monthly statements as a fan-out: a Celery chord over batches of users.

    start_statement_run(run)            on "default": plans the batches, sends the chord
      ├─ build_statement_batch(batch)   on "low", one per batch of users, in parallel
      ├─ build_statement_batch(batch)
      └─ ...
    finish_statement_run(run)           on "default": the chord's callback, once every batch succeeded
    statement_run_failed(..., run)      the callback's errback, instead, when a batch failed

A chord's callback runs only if every task of its header succeeded. If one fails
(for good: after its retries) the others still run and commit their lines, the
callback never runs, and the result backend fails the chord with a ChordError and
calls the callback's errbacks instead. With the Redis result backend this happens
when the last header task reports in (Redis counts them), in the worker that ran it.
Either way every batch has reported: the run ends from its batches' rows
(``StatementRun.settle``), COMPLETED, or PARTIAL naming the batches that failed.
One batch's failure is that batch's users' alone.
"""

import logging

from celery import chord, shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Sum

from ..core.task_base import BaseTask
from ..exports.models import Transaction
from .models import StatementBatch, StatementLine, StatementRun

logger = logging.getLogger(__name__)


def user_batches(run: StatementRun, size: int):
    """(first, last) user ids of consecutive batches of ``size`` users with transactions in the month.

    Keyset pagination: each batch is one indexed query from the previous batch's
    last id, and only ids travel in the messages, never rows.
    """
    start, end = run.window()
    users = (
        get_user_model()
        .objects.filter(transactions__created_at__gte=start, transactions__created_at__lt=end)
        .distinct()
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    last = 0
    while batch := list(users.filter(pk__gt=last)[:size]):
        yield batch[0], batch[-1]
        last = batch[-1]


# --8<-- [start:fan-out]
@shared_task
def start_statement_run(run_id: int) -> int:
    """Fan the month out: a chord of one batch task per STATEMENT_BATCH_SIZE users. Returns the batch count."""
    # PENDING to RUNNING in one conditional UPDATE: a duplicate message fans out nothing.
    if not StatementRun.objects.filter(pk=run_id, status=StatementRun.Status.PENDING).update(
        status=StatementRun.Status.RUNNING
    ):
        logger.info("statements: run %s is not pending (already started, or gone)", run_id)
        return 0
    run = StatementRun.objects.get(pk=run_id)
    with transaction.atomic():
        # Lines and batches of an earlier build of this month (users may have left the month since).
        StatementLine.objects.filter(run=run).delete()
        StatementBatch.objects.filter(run=run).delete()
        batches = StatementBatch.objects.bulk_create(
            StatementBatch(run=run, first_user_id=first, last_user_id=last)
            for first, last in user_batches(run, settings.STATEMENT_BATCH_SIZE)
        )
        StatementRun.objects.filter(pk=run.pk).update(batches=len(batches))
    if not batches:
        finish_statement_run(run.pk)
        return 0
    # si(): immutable signatures, each task gets only its own arguments: a batch
    # its row's id, the callback the run's. The errback is called instead of the
    # callback when a batch fails.
    header = [build_statement_batch.si(batch.pk) for batch in batches]
    callback = finish_statement_run.si(run.pk).on_error(statement_run_failed.s(run.pk))
    chord(header)(callback)
    logger.info("statements %s: %s batches sent", run.month, len(batches))
    return len(batches)
    # --8<-- [end:fan-out]


# --8<-- [start:batch]
def month_totals(run: StatementRun, first_user_id: int, last_user_id: int):
    """Each user's total and count of the month's transactions, per currency: a batch's statement lines."""
    start, end = run.window()
    return (
        Transaction.objects.filter(
            user_id__gte=first_user_id, user_id__lte=last_user_id, created_at__gte=start, created_at__lt=end
        )
        .values("user_id", "currency")
        .annotate(total=Sum("amount"), count=Count("pk"))
        .order_by("user_id", "currency")
    )


class StatementBatchTask(BaseTask):
    """BaseTask, plus: a batch that fails for good says why on its row (the dead letter has the rest)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        batch_id = args[0] if args else kwargs["batch_id"]
        StatementBatch.objects.filter(pk=batch_id).exclude(status=StatementBatch.Status.COMPLETED).update(
            status=StatementBatch.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        super().on_failure(exc, task_id, args, kwargs, einfo)


@shared_task(base=StatementBatchTask)
def build_statement_batch(batch_id: int) -> int:
    """Write the statement lines of the batch's users; returns how many.

    Idempotent: the batch's lines are deleted and written again in one
    transaction, with its row marked COMPLETED, so a redelivered message (a
    worker killed mid-batch, late acks) or a second build of the month gives the
    same lines, never twice as many. A failed batch replayed from its dead
    letter after its run ended settles the run again: the last one to succeed
    completes it.
    """
    batch = StatementBatch.objects.select_related("run").filter(pk=batch_id).first()
    if batch is None:
        logger.warning("statements: batch %s does not exist (its month was built again since)", batch_id)
        return 0
    run, first, last = batch.run, batch.first_user_id, batch.last_user_id
    totals = month_totals(run, first, last)
    with transaction.atomic():
        StatementLine.objects.filter(run=run, user_id__gte=first, user_id__lte=last).delete()
        lines = StatementLine.objects.bulk_create(StatementLine(run=run, **row) for row in totals)
        StatementBatch.objects.filter(pk=batch.pk).update(
            status=StatementBatch.Status.COMPLETED, lines=len(lines), error=""
        )
    # A replay, after the run ended without this batch: no chord waits for it any
    # more, so it settles the run itself. (A run still building is left to its chord.)
    StatementRun.settle(run.pk, StatementRun.INCOMPLETE)
    return len(lines)
    # --8<-- [end:batch]


# --8<-- [start:callback]
@shared_task
def finish_statement_run(run_id: int) -> str | None:
    """The chord's callback: every batch succeeded. The run is COMPLETED (once)."""
    return StatementRun.settle(run_id, (StatementRun.Status.RUNNING,))


@shared_task
def statement_run_failed(request, exc, traceback, run_id: int) -> None:
    """The callback's errback: a batch failed for good, so the callback will never run.

    Celery calls it with the failure's request, exception and traceback first
    (here a ChordError naming the batch task that failed), in the worker process
    that reported the last batch. Every batch has reported by then, and the
    others committed their lines: the run ends PARTIAL, those users' statements
    done, the failed batches named on the run (FAILED if no batch succeeded).
    Without this the run would say RUNNING for ever. Each failed batch has its
    own dead letter (core.FailedTask, from BaseTask); replayed once the cause is
    fixed, it writes its lines and completes the run (``build_statement_batch``).
    """
    reason = f"{type(exc).__name__}: {exc}"
    status = StatementRun.settle(run_id, (StatementRun.Status.RUNNING,), reason)
    if status:
        logger.error("statements: run %s ended %s: %s", run_id, status, reason)
        # --8<-- [end:callback]
