"""Monthly statements as a fan-out: a Celery chord over batches of users.

    start_statement_run(run)            on "default": plans the batches, sends the chord
      ├─ build_statement_batch(...)     on "low", one per batch of users, in parallel
      ├─ build_statement_batch(...)
      └─ ...
    finish_statement_run(counts, run)   on "default": the chord's callback, once every batch succeeded
    statement_run_failed(..., run)      the callback's errback: a batch failed, the run is FAILED

A chord's callback runs only if every task of its header succeeded. If one fails
(for good: after its retries) the others still run and commit their lines, the
callback never runs, and the result backend fails the chord with a ChordError and
calls the callback's errbacks instead. With the Redis result backend this happens
when the last header task reports in (Redis counts them), in the worker that ran it.
"""

import logging

from celery import chord, shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from ..exports.models import Transaction
from .models import StatementLine, StatementRun

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
    batches = list(user_batches(run, settings.STATEMENT_BATCH_SIZE))
    # Lines of an earlier build of this month (users may have left the month since).
    StatementLine.objects.filter(run=run).delete()
    StatementRun.objects.filter(pk=run.pk).update(batches=len(batches))
    if not batches:
        finish_statement_run([], run.pk)
        return 0
    # si(): immutable signatures, each batch gets only its own arguments. The
    # callback gets the list of the batches' results, then run_id. Its errback
    # is called instead of it when a batch fails.
    header = [build_statement_batch.si(run.pk, first, last) for first, last in batches]
    callback = finish_statement_run.s(run.pk).on_error(statement_run_failed.s(run.pk))
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


@shared_task
def build_statement_batch(run_id: int, first_user_id: int, last_user_id: int) -> int:
    """Write the statement lines of users ``first_user_id``..``last_user_id``; returns how many.

    Idempotent: the batch's lines are deleted and written again in one
    transaction, so a redelivered message (a worker killed mid-batch, late acks)
    or a second build of the month gives the same lines, never twice as many.
    """
    run = StatementRun.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("statements: run %s does not exist", run_id)
        return 0
    totals = month_totals(run, first_user_id, last_user_id)
    with transaction.atomic():
        StatementLine.objects.filter(run=run, user_id__gte=first_user_id, user_id__lte=last_user_id).delete()
        lines = StatementLine.objects.bulk_create(StatementLine(run=run, **row) for row in totals)
    return len(lines)
    # --8<-- [end:batch]


# --8<-- [start:callback]
@shared_task
def finish_statement_run(line_counts: list[int], run_id: int) -> int:
    """The chord's callback: every batch succeeded. Mark the run COMPLETED (once)."""
    StatementRun.objects.filter(pk=run_id, status=StatementRun.Status.RUNNING).update(
        status=StatementRun.Status.COMPLETED, lines=sum(line_counts), finished_at=timezone.now()
    )
    return sum(line_counts)


@shared_task
def statement_run_failed(request, exc, traceback, run_id: int) -> None:
    """The callback's errback: a batch failed for good, so the callback will never run.

    Celery calls it with the failure's request, exception and traceback first
    (here a ChordError naming the batch task that failed), in the worker process
    that reported the last batch. The failed batch has its own dead letter
    (core.FailedTask, from BaseTask); the other batches committed their lines.
    Without this the run would say RUNNING for ever. Fix the cause, then build
    the month again (``StatementRun.start``): every batch replaces its lines.
    """
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    failed = StatementRun.objects.filter(pk=run_id, status__in=StatementRun.ACTIVE).update(
        status=StatementRun.Status.FAILED, error=reason, finished_at=timezone.now()
    )
    if failed:
        logger.error("statements: run %s failed: %s", run_id, reason)
        # --8<-- [end:callback]
