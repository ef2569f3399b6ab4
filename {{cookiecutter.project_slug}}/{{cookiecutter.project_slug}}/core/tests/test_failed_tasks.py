"""The dead-letter record: written after the last retry, listed and replayed by operators."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.urls import reverse

from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge
from {{ cookiecutter.project_slug }}.payments.providers import SandboxProvider
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment

from ..models import FailedTask
from ..task_base import database_unavailable, queue_of


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


def fail_for_good(order, settings, task_id=None):
    """Run the payment of ``order`` with every attempt timing out: the last one leaves a dead letter."""
    attempts = settings.TASK_RETRY_POLICY["max_retries"] + 1
    SandboxProvider().plan(order.idempotency_key, *["timeout"] * attempts)
    assert process_payment.apply((order.pk,), task_id=task_id, throw=False).failed()


@pytest.fixture
def failed_payment(superuser, settings, eager_retries):
    order = Order.objects.create(user=superuser, amount_cents=999)
    fail_for_good(order, settings)
    return FailedTask.objects.get(), order


def test_failed_task_records_what_an_operator_needs(failed_payment):
    failed, order = failed_payment
    assert failed.args == [order.pk]
    assert failed.exception_type.endswith("ProviderTimeout")
    assert "ProviderTimeout" in failed.traceback
    assert failed.retries == 3
    assert failed.replayed_at is None


def test_command_lists_and_replays(failed_payment, capsys):
    failed, order = failed_payment
    call_command("failed_tasks", "list")
    assert f"{failed.pk}\t" in capsys.readouterr().out

    call_command("failed_tasks", "replay", str(failed.pk))  # eager in tests: runs now
    assert f"replayed as {FailedTask.objects.get().replay_task_id}" in capsys.readouterr().out

    failed.refresh_from_db()
    order.refresh_from_db()
    assert failed.replay_task_id
    assert order.status == Order.Status.PAID
    assert SandboxCharge.objects.count() == 1
    call_command("failed_tasks", "list")
    assert capsys.readouterr().out == ""  # replayed ones are hidden unless --all


def test_replay_of_unknown_id_is_an_error(db):
    with pytest.raises(CommandError, match="no FailedTask with id 404"):
        call_command("failed_tasks", "replay", "404")


def test_admin_action_replays(failed_payment, client):
    failed, order = failed_payment
    client.force_login(order.user)
    response = client.post(
        reverse("admin:core_failedtask_changelist"), {"action": "replay", "_selected_action": [failed.pk]}
    )
    assert response.status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


@pytest.mark.parametrize(
    ("routing_key", "queue"),
    [
        ("high", "high"),
        # A retry delayed by RabbitMQ (native delayed delivery): 2 s in 28 binary digits.
        ("0." * 26 + "1.0.high", "high"),
        (None, ""),
    ],
)
def test_the_queue_of_a_message_ignores_a_delay_prefix(routing_key, queue):
    assert queue_of(SimpleNamespace(delivery_info={"routing_key": routing_key})) == queue


def test_without_delivery_info_the_queue_is_the_tasks_route():
    """A task killed at its hard time limit has its failure hooks run outside its request."""
    assert queue_of(SimpleNamespace(delivery_info=None), process_payment) == "high"


def test_two_failures_with_one_task_id_are_both_kept_and_both_replay(superuser, settings, eager_retries, capsys):
    """A producer that reuses task ids (or a message delivered twice): each failure is a dead letter of its own."""
    first, second = (Order.objects.create(user=superuser, amount_cents=cents) for cents in (100, 200))
    fail_for_good(first, settings, task_id="nightly-payment")
    fail_for_good(second, settings, task_id="nightly-payment")

    older, newer = FailedTask.objects.order_by("failure")
    assert (older.task_id, older.failure, older.args) == ("nightly-payment", 1, [first.pk])
    assert (newer.task_id, newer.failure, newer.args) == ("nightly-payment", 2, [second.pk])
    call_command("failed_tasks", "list")
    listed = capsys.readouterr().out
    assert f"{older.pk}\t" in listed
    assert f"{newer.pk}\t" in listed
    assert "id=nightly-payment (failure 2)" in listed

    call_command("failed_tasks", "replay", "--all")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Order.Status.PAID, Order.Status.PAID)


def test_one_failure_is_one_row_however_it_is_written(db):
    """(task id, failure) is unique: a get_or_create by task id (payments.tasks.refuse_payment) stays one row."""
    FailedTask.objects.create(task_name="t", task_id="payment-mismatch-ch_1", exception_type="E")
    with pytest.raises(IntegrityError), transaction.atomic():
        FailedTask.objects.create(task_name="t", task_id="payment-mismatch-ch_1", exception_type="E")
    assert FailedTask.objects.get_or_create(task_id="payment-mismatch-ch_1")[1] is False


@pytest.mark.parametrize("length", [300, 10_000])
def test_a_task_id_of_any_length_is_recorded_whole(db, length):
    task_id = "import-" + "x" * (length - 7)  # apply_async(task_id=...) takes any string
    process_payment.on_failure(RuntimeError("boom"), task_id, (1,), {}, None)
    process_payment.on_failure(RuntimeError("boom"), task_id, (2,), {}, None)

    assert [(row.task_id, row.failure) for row in FailedTask.objects.order_by("failure")] == [
        (task_id, 1),
        (task_id, 2),
    ]


def test_arguments_celery_decodes_to_python_values_are_kept_and_replayed_as_such(db):
    """Celery's JSON brings a Decimal or a datetime back as one: the record must hold it, and the replay send it."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    process_payment.on_failure(RuntimeError("boom"), "t-1", (Decimal("12.50"),), {"at": when}, None)

    failed = FailedTask.objects.get()
    assert failed.args == [{"__type__": "decimal", "__value__": "12.50"}]  # as Celery's serializer writes it
    assert failed.arguments() == ([Decimal("12.50")], {"at": when})


def test_a_huge_argument_is_cut_with_its_size_and_the_record_cannot_be_replayed(db, settings, client, superuser):
    """5 MB of argument (and an error that repeats it) makes a record of about 64 KiB, not 15 MB."""
    huge = "x" * 5_000_000
    process_payment.on_failure(ValueError(f"cannot parse {huge}"), "t-1", (huge, 42), {"note": "small"}, None)

    failed = FailedTask.objects.get()
    limit = settings.FAILED_TASK_ARGUMENTS_LIMIT
    assert failed.arguments_truncated
    assert failed.arguments_size == len(json.dumps([[huge, 42], {"note": "small"}], separators=(",", ":")))
    cut, kept = failed.args
    assert (cut["__truncated__"], cut["size"], cut["head"]) == (True, len(huge) + 2, '"' + "x" * 1023)
    assert (kept, failed.kwargs) == (42, {"note": "small"})  # the small ones stay as they were
    assert len(json.dumps([failed.args, failed.kwargs])) < limit
    assert len(failed.exception_message) < limit + 100
    assert failed.exception_message.endswith(f"[... {len('cannot parse ') + len(huge) - limit} characters cut ...]")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_column_size(t.*) FROM core_failedtask t")
        assert cursor.fetchone()[0] < 4 * limit

    # Replaying would send other arguments than the task got: refused, clearly, everywhere.
    with pytest.raises(ValueError, match="arguments were cut"):
        failed.replay()
    with pytest.raises(CommandError, match=f"{failed.pk}: its arguments were cut to fit the record"):
        call_command("failed_tasks", "replay", str(failed.pk))
    client.force_login(superuser)
    response = client.post(
        reverse("admin:core_failedtask_changelist"), {"action": "replay", "_selected_action": [failed.pk]}, follow=True
    )
    assert f"{failed.pk} not replayed: its arguments were cut" in response.content.decode()
    failed.refresh_from_db()
    assert failed.replayed_at is None


def test_many_small_arguments_over_the_limit_are_cut_as_one(db, settings):
    settings.FAILED_TASK_ARGUMENTS_LIMIT = 1000
    process_payment.on_failure(RuntimeError("boom"), "t-1", tuple(range(1000)), {}, None)

    failed = FailedTask.objects.get()
    (cut,) = failed.args
    assert (failed.arguments_truncated, cut["size"], failed.kwargs) == (True, failed.arguments_size, {})
    assert cut["head"].startswith("[[0,1,2,3")


def test_a_read_only_database_is_unavailable_not_a_bug(db):
    """What a primary demoted to a standby answers a write (SQLSTATE 25006): a retry on a new connection."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(DatabaseError) as read_only:
            FailedTask.objects.create(task_name="t", task_id="t-1", exception_type="E")
    assert "read-only transaction" in str(read_only.value)
    assert database_unavailable(read_only.value)

    with pytest.raises(DatabaseError) as wrong_query, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM core_failedtask")
    assert not database_unavailable(wrong_query.value)
