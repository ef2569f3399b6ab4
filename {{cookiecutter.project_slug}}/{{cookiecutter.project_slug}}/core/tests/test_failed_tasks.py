"""The dead-letter record: written after the last retry, listed and replayed by operators."""

from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse

from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge
from {{ cookiecutter.project_slug }}.payments.providers import SandboxProvider
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment

from ..models import FailedTask
from ..task_base import queue_of


@pytest.fixture
def failed_payment(db, settings, eager_retries):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    order = Order.objects.create(user=user, amount_cents=999)
    attempts = settings.TASK_RETRY_POLICY["max_retries"] + 1
    SandboxProvider().plan(order.idempotency_key, *["timeout"] * attempts)
    assert process_payment.apply((order.pk,), throw=False).failed()
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
