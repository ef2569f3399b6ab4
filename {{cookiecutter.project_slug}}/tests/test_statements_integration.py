"""The statement fan-out on the real pools: a chord of batch tasks, and one that fails.

A chord's callback runs only when every task of its header succeeded. These tests
show, on real workers and the real result backend, both halves: a month whose
batches all succeed is COMPLETED by the callback; a month with one failing batch
still gets the other batches' lines and ends PARTIAL (the errback, instead of the
callback, settles it from the batches' rows), the failing batch leaves its dead
letter, and replaying that dead letter once the cause is gone completes the month.
"""

from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.statements.models import StatementBatch, StatementLine, StatementRun
from {{ cookiecutter.project_slug }}.statements.tasks import build_statement_batch
from {{ cookiecutter.project_slug }}.statements.tests.test_statements import OCTOBER, spend

from .conftest import wait_for


@pytest.fixture
def users(live_celery):
    # Seven users with October transactions: four batches of two (STATEMENT_BATCH_SIZE in tests).
    users = [get_user_model().objects.create_user(f"customer{n}") for n in range(7)]
    for n, user in enumerate(users):
        spend(user, f"{n + 1}.00")
        spend(user, "0.50", currency="USD")
    return users


def finished(run_id: int) -> StatementRun | None:
    run = StatementRun.objects.get(pk=run_id)
    return run if run.status not in StatementRun.ACTIVE else None


def ended(run_id: int, status: str) -> StatementRun | None:
    return StatementRun.objects.filter(pk=run_id, status=status).first()


def test_every_batch_succeeds_and_the_callback_completes_the_run(users):
    call_command("build_statements", "--month", "2026-10")
    run = wait_for(lambda: finished(StatementRun.objects.get(month=OCTOBER).pk), 60, "the statement run")

    assert (run.status, run.batches, run.lines) == (StatementRun.Status.COMPLETED, 4, 14)
    eur = StatementLine.objects.get(run=run, user=users[6], currency="EUR")
    assert (eur.total, eur.count) == (Decimal("7.00"), 1)


@contextmanager
def lines_refused_for(user):
    """A failure nobody could have refused: the database turns down this user's statement lines.

    (Once, 150 large amounts overflowed a line's total; lines now hold any total.)
    """
    table = StatementLine._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT refused_for_the_test CHECK (user_id <> {user.pk:d})")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT refused_for_the_test")


def test_one_failing_batch_is_that_batchs_alone_and_its_replay_completes_the_run(users):
    # customer2 is in the second batch (customer2, customer3).
    with lines_refused_for(users[2]):
        run, _ = StatementRun.start(OCTOBER)
        run = wait_for(lambda: finished(run.pk), 60, "the statement run to end")

        # The errback ran instead of the callback: PARTIAL, naming the batch's users, with the chord's reason.
        assert run.status == StatementRun.Status.PARTIAL
        assert run.error.startswith(f"1 of 4 batches failed (users {users[2].pk}-{users[3].pk}): those users")
        assert "ChordError: Dependency " in run.error
        assert "refused_for_the_test" in run.error
        # The other three batches ran to the end: their users have their statements.
        assert run.lines == 10
        assert sorted(StatementLine.objects.filter(run=run).values_list("user__username", flat=True).distinct()) == [
            f"customer{n}" for n in (0, 1, 4, 5, 6)
        ]
        # The failing batch has its dead letter, for an operator, and its row says why.
        failed = StatementBatch.objects.get(run=run, first_user_id=users[2].pk)
        dead = wait_for(lambda: FailedTask.objects.filter(task_name=build_statement_batch.name).first(), 30, "it")
        assert dead.args == [failed.pk]
        failed = wait_for(lambda: StatementBatch.objects.exclude(error="").filter(pk=failed.pk).first(), 30, "why")
        assert (failed.status, "refused_for_the_test" in failed.error) == (StatementBatch.Status.FAILED, True)

    # Fixed, the dead letter is replayed: the batch writes its lines and completes the run.
    call_command("failed_tasks", "replay", str(dead.pk))
    run = wait_for(lambda: ended(run.pk, StatementRun.Status.COMPLETED), 60, "the replayed batch to complete the run")
    assert (run.lines, run.error) == (14, "")
    assert StatementLine.objects.filter(run=run, user=users[2]).exists()
