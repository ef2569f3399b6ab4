"""The statement fan-out on the real pools: a chord of batch tasks, and one that fails.

A chord's callback runs only when every task of its header succeeded. These tests
show, on real workers and the real result backend, both halves: a month whose
batches all succeed is COMPLETED by the callback; a month with one failing batch
still gets the other batches' lines, the callback never runs, and the errback
marks the run FAILED while the failing batch leaves its dead letter.
"""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.statements.models import StatementLine, StatementRun
from {{ cookiecutter.project_slug }}.statements.tasks import build_statement_batch
from {{ cookiecutter.project_slug }}.statements.tests.test_statements import OCTOBER, spend

from .conftest import wait_for

# The largest amount a Transaction holds: a hundred and one of them overflow a
# statement line's total, and the database refuses the batch's INSERT.
LARGEST = "9999999999.99"


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


def test_every_batch_succeeds_and_the_callback_completes_the_run(users):
    call_command("build_statements", "--month", "2026-10")
    run = wait_for(lambda: finished(StatementRun.objects.get(month=OCTOBER).pk), 60, "the statement run")

    assert (run.status, run.batches, run.lines) == (StatementRun.Status.COMPLETED, 4, 14)
    eur = StatementLine.objects.get(run=run, user=users[6], currency="EUR")
    assert (eur.total, eur.count) == (Decimal("7.00"), 1)


def test_one_failing_batch_fails_the_run_and_the_callback_never_runs(users):
    # customer2 is in the second batch (customer2, customer3).
    overflow = [spend(users[2], LARGEST).pk for _ in range(101)]
    run, _ = StatementRun.start(OCTOBER)
    run = wait_for(lambda: finished(run.pk), 60, "the statement run to end")

    # The errback ran instead of the callback: FAILED, with the chord's reason.
    assert run.status == StatementRun.Status.FAILED
    assert run.error.startswith("ChordError: Dependency ")
    assert "numeric field overflow" in run.error
    assert run.lines == 0  # the callback, which counts the lines, never ran
    # The other three batches ran to the end and committed their lines.
    assert sorted(StatementLine.objects.filter(run=run).values_list("user__username", flat=True).distinct()) == [
        f"customer{n}" for n in (0, 1, 4, 5, 6)
    ]
    # The failing batch has its dead letter, for an operator, with its arguments.
    dead = wait_for(lambda: FailedTask.objects.filter(task_name=build_statement_batch.name).first(), 30, "dead letter")
    assert dead.args == [run.pk, users[2].pk, users[3].pk]

    # Fixed, the month is built again: the same run, every batch rewritten, COMPLETED.
    Transaction.objects.filter(pk__in=overflow).delete()
    run, started = StatementRun.start(OCTOBER)
    assert started
    run = wait_for(lambda: finished(run.pk), 60, "the rebuilt run")
    assert (run.status, run.lines, run.error) == (StatementRun.Status.COMPLETED, 14, "")
