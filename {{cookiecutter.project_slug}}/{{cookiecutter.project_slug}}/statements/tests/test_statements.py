"""The statement fan-out's parts, run eagerly: batches, idempotent batch tasks, how a run ends."""

from datetime import date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.backends.base.operations import BaseDatabaseOperations
from django.utils import timezone

from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.imports.models import TransactionImport
from {{ cookiecutter.project_slug }}.imports.tasks import LARGEST_AMOUNT, process_transaction_import

from ..models import StatementBatch, StatementLine, StatementRun
from ..tasks import build_statement_batch, user_batches

OCTOBER = date(2026, 10, 1)


def spend(user, amount: str, currency: str = "EUR", day: date = date(2026, 10, 15)):
    created_at = timezone.make_aware(datetime(day.year, day.month, day.day, 12))
    return Transaction.objects.create(
        user=user, created_at=created_at, amount=Decimal(amount), currency=currency, description="x"
    )


@pytest.fixture
def users(db):
    return [get_user_model().objects.create_user(f"user{n}") for n in range(5)]


def test_batches_cover_the_months_users_once_each_by_id(users):
    for user in users[:4]:
        spend(user, "1.00")
    spend(users[4], "1.00", day=date(2026, 11, 1))  # next month: not in October's batches
    run = StatementRun.objects.create(month=OCTOBER)

    ids = [user.pk for user in users]
    assert list(user_batches(run, 3)) == [(ids[0], ids[2]), (ids[3], ids[3])]


def test_a_batch_task_run_twice_writes_its_lines_once(users):
    spend(users[0], "10.00")
    spend(users[0], "2.50")
    spend(users[0], "7.00", currency="USD")
    run = StatementRun.objects.create(month=OCTOBER, status=StatementRun.Status.RUNNING)
    batch = StatementBatch.objects.create(run=run, first_user_id=users[0].pk, last_user_id=users[1].pk)

    assert build_statement_batch(batch.pk) == 2
    assert build_statement_batch(batch.pk) == 2  # redelivered

    lines = StatementLine.objects.filter(run=run).order_by("currency")
    assert [(line.currency, line.total, line.count) for line in lines] == [
        ("EUR", Decimal("12.50"), 2),
        ("USD", Decimal("7.00"), 1),
    ]
    batch.refresh_from_db()
    assert (batch.status, batch.lines) == (StatementBatch.Status.COMPLETED, 2)
    run.refresh_from_db()
    assert run.status == StatementRun.Status.RUNNING  # its chord ends the run, not a batch


def test_a_line_holds_the_total_of_as_many_transactions_as_it_counts():
    """Whatever amounts the transactions hold, their total fits: the line's count overflows first."""
    total, count = StatementLine._meta.get_field("total"), StatementLine._meta.get_field("count")
    # What the count's column holds in Postgres (SQLite enforces neither limit).
    _, most_counted = BaseDatabaseOperations.integer_field_ranges[count.get_internal_type()]
    largest_total = Decimal(10) ** (total.max_digits - total.decimal_places) - Decimal(10) ** -total.decimal_places
    assert most_counted * LARGEST_AMOUNT <= largest_total
    assert total.decimal_places == Transaction._meta.get_field("amount").decimal_places


def test_a_users_import_of_the_largest_amounts_gets_a_statement_like_everyone_else(
    users, settings, tmp_path, django_capture_on_commit_callbacks
):
    """The review's case: 150 rows of 9999999999.99 once overflowed the line and failed the statements' batch."""
    settings.MEDIA_ROOT = tmp_path
    spend(users[1], "5.00")
    lines = "".join(f"2026-10-15T12:00:00+00:00,{LARGEST_AMOUNT},EUR,big {n}\r\n" for n in range(150))
    text = "created_at,amount,currency,description\r\n" + lines
    upload = TransactionImport.objects.create(user=users[0], file=SimpleUploadedFile("t.csv", text.encode()))
    assert process_transaction_import(upload.pk) == "completed"  # every amount is one a Transaction holds

    with django_capture_on_commit_callbacks(execute=True):
        run, _ = StatementRun.start(OCTOBER)

    run.refresh_from_db()
    assert (run.status, run.lines, run.error) == (StatementRun.Status.COMPLETED, 2, "")
    line = StatementLine.objects.get(run=run, user=users[0])
    assert (line.total, line.count) == (150 * LARGEST_AMOUNT, 150)


def test_a_run_whose_batch_failed_ends_partial_and_the_batchs_replay_completes_it(users):
    for user in users[:3]:
        spend(user, "1.00")
    run = StatementRun.objects.create(month=OCTOBER, status=StatementRun.Status.RUNNING)
    ok, failing, other = (
        StatementBatch.objects.create(run=run, first_user_id=user.pk, last_user_id=user.pk) for user in users[:3]
    )
    build_statement_batch(ok.pk)
    build_statement_batch(other.pk)

    # The chord's errback: every batch has reported, one without its lines.
    status = StatementRun.settle(run.pk, (StatementRun.Status.RUNNING,), "ChordError: Dependency x raised y")

    run.refresh_from_db()
    assert status == run.status == StatementRun.Status.PARTIAL
    assert (run.lines, run.finished_at is not None) == (2, True)
    assert run.error.startswith(f"1 of 3 batches failed (users {users[1].pk}-{users[1].pk}): those users have no")
    assert run.error.endswith("ChordError: Dependency x raised y")
    failing.refresh_from_db()
    assert failing.status == StatementBatch.Status.FAILED

    # Its dead letter replayed once the cause is fixed: the run completes itself.
    build_statement_batch(failing.pk)

    run.refresh_from_db()
    assert (run.status, run.lines, run.error) == (StatementRun.Status.COMPLETED, 3, "")


def test_a_run_whose_every_batch_failed_is_failed(users):
    run = StatementRun.objects.create(month=OCTOBER, status=StatementRun.Status.RUNNING)
    StatementBatch.objects.create(run=run, first_user_id=users[0].pk, last_user_id=users[1].pk)

    assert StatementRun.settle(run.pk, (StatementRun.Status.RUNNING,)) == StatementRun.Status.FAILED
    assert StatementRun.settle(run.pk, (StatementRun.Status.RUNNING,)) is None  # ended once


def test_a_month_without_transactions_completes_at_once(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run, started = StatementRun.start(OCTOBER)

    run.refresh_from_db()
    assert started
    assert (run.status, run.batches, run.lines) == (StatementRun.Status.COMPLETED, 0, 0)
