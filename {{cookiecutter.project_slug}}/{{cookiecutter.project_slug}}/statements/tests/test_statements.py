"""The statement fan-out's parts, run eagerly: batches, idempotent batch tasks, the callback."""

from datetime import date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from {{ cookiecutter.project_slug }}.exports.models import Transaction

from ..models import StatementLine, StatementRun
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

    assert build_statement_batch(run.pk, users[0].pk, users[1].pk) == 2
    assert build_statement_batch(run.pk, users[0].pk, users[1].pk) == 2  # redelivered

    lines = StatementLine.objects.filter(run=run).order_by("currency")
    assert [(line.currency, line.total, line.count) for line in lines] == [
        ("EUR", Decimal("12.50"), 2),
        ("USD", Decimal("7.00"), 1),
    ]


def test_a_month_without_transactions_completes_at_once(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run, started = StatementRun.start(OCTOBER)

    run.refresh_from_db()
    assert started
    assert (run.status, run.batches, run.lines) == (StatementRun.Status.COMPLETED, 0, 0)
