"""The payment task's logic, run eagerly. tests/test_payments_integration.py runs it on real workers."""

import socket
import uuid
from datetime import timedelta

import pytest
import redis
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from {{ cookiecutter.project_slug }}.core.models import FailedTask

from .. import tasks
from ..models import InvalidTransition, Order, SandboxCharge
from ..providers import ProviderTimeout, SandboxProvider
from ..tasks import process_payment


def checkout_form(**fields) -> dict:
    """A filled-in checkout form, with a submission key of its own (as each rendered form has)."""
    return {
        "amount": "25.00",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "submission_key": str(uuid.uuid4()),
        **fields,
    }


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


@pytest.fixture
def order(user):
    return Order.objects.create(user=user, amount_cents=4200)


def test_pays_the_order_once(order):
    assert process_payment(order.pk) == "paid"
    assert process_payment(order.pk) == "already-paid"

    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert order.paid_at is not None
    charge = SandboxCharge.objects.get()
    assert (order.charge_id, charge.amount_cents) == (charge.charge_id, 4200)


def test_a_lost_commit_does_not_charge_twice(order):
    """The article's failure: charged, then the worker died before saving PAID."""
    process_payment(order.pk)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PROCESSING, charge_id="")

    assert process_payment(order.pk) == "paid"

    assert SandboxCharge.objects.count() == 1


def test_timeouts_are_retried_with_the_same_key(order, sandbox, eager_retries):
    sandbox.plan(order.idempotency_key, "timeout", "timeout_after_charge", "ok")

    assert process_payment.apply((order.pk,), throw=False).get() == "paid"

    order.refresh_from_db()
    assert order.payment_attempts == 3
    assert SandboxCharge.objects.count() == 1


def unreachable_redis() -> redis.Redis:
    """A real client for a port nobody listens on, without redis-py's own retries: Redis down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def test_a_sandbox_whose_redis_is_down_times_out_without_charging(order):
    down = SandboxProvider(unreachable_redis())

    with pytest.raises(ProviderTimeout, match="store did not answer") as raised:
        down.charge(amount_cents=4200, currency="EUR", idempotency_key=str(order.idempotency_key))

    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    assert not SandboxCharge.objects.exists()


def test_a_redis_outage_at_the_sandbox_is_retried_not_a_dead_letter(order, sandbox, monkeypatch, eager_retries):
    """Found by the chaos soak: a Redis restart mid-payment used to fail the task for good."""
    attempts = iter([SandboxProvider(unreachable_redis()), sandbox])  # down, then back
    monkeypatch.setattr(tasks, "get_provider", lambda: next(attempts))

    assert process_payment.apply((order.pk,), throw=False).get() == "paid"

    order.refresh_from_db()
    assert order.payment_attempts == 2
    assert SandboxCharge.objects.count() == 1
    assert not FailedTask.objects.exists()


def test_decline_fails_the_order_without_retry_or_dead_letter(order, sandbox):
    sandbox.plan(order.idempotency_key, "decline")

    assert process_payment(order.pk) == "declined"

    order.refresh_from_db()
    assert order.status == Order.Status.FAILED
    assert "declined" in order.failure_reason
    assert order.payment_attempts == 1
    assert not SandboxCharge.objects.exists()
    assert not FailedTask.objects.exists()


def test_exhausted_retries_leave_a_dead_letter(order, sandbox, settings, eager_retries):
    attempts = settings.TASK_RETRY_POLICY["max_retries"] + 1
    sandbox.plan(order.idempotency_key, *["unavailable"] * attempts)

    result = process_payment.apply((order.pk,), throw=False)

    assert result.failed()
    assert "503" in str(result.result)
    failed = FailedTask.objects.get()
    assert failed.task_name == process_payment.name
    assert failed.args == [order.pk]
    assert failed.exception_type.endswith("ProviderUnavailable")
    order.refresh_from_db()
    assert order.status == Order.Status.PROCESSING  # unknown outcome: for an operator to settle
    assert order.payment_attempts == attempts


def test_the_sandbox_forgets_a_key_after_24_hours_like_stripe(order, sandbox):
    """What makes a late replay dangerous: the same key, a day later, charges again."""
    key = str(order.idempotency_key)
    first = sandbox.charge(amount_cents=4200, currency="EUR", idempotency_key=key)
    assert sandbox.charge(amount_cents=4200, currency="EUR", idempotency_key=key) == first

    SandboxCharge.objects.update(created_at=timezone.now() - timedelta(hours=25))
    again = sandbox.charge(amount_cents=4200, currency="EUR", idempotency_key=key)

    assert again.id != first.id
    assert SandboxCharge.objects.filter(idempotency_key=key).count() == 2
    assert sandbox.find(idempotency_key=key, metadata={"order_id": str(order.pk)}) == again


def test_a_replay_past_the_idempotency_window_finds_the_earlier_charge(order, sandbox, settings):
    key = str(order.idempotency_key)
    first = sandbox.charge(amount_cents=4200, currency="EUR", idempotency_key=key)  # its answer was lost
    SandboxCharge.objects.update(created_at=timezone.now() - timedelta(days=3))
    Order.objects.filter(pk=order.pk).update(
        status=Order.Status.PROCESSING, payment_attempts=1, created_at=timezone.now() - timedelta(days=3)
    )

    assert process_payment(order.pk) == "paid"

    order.refresh_from_db()
    assert order.charge_id == first.id
    assert SandboxCharge.objects.count() == 1


def test_missing_order_finishes_without_charging_or_retrying(db, caplog):
    assert process_payment(424242) == "missing"
    assert not SandboxCharge.objects.exists()
    assert not FailedTask.objects.exists()
    assert "order 424242 does not exist" in caplog.text


def test_status_machine_refuses_impossible_moves(order):
    order.move_to(Order.Status.PROCESSING)
    order.move_to(Order.Status.PAID)
    with pytest.raises(InvalidTransition):
        order.move_to(Order.Status.PENDING)


# --8<-- [start:on-commit-unit]
def test_checkout_sends_the_payment_only_after_commit(user, client, django_capture_on_commit_callbacks):
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("payments:checkout"), checkout_form())
    order = Order.objects.get()
    assert response.url == reverse("payments:order", args=[order.pk])
    assert order.status == Order.Status.PENDING  # nothing ran inside the transaction
    assert len(callbacks) == 1

    callbacks[0]()  # COMMIT happened: the message is sent (and runs eagerly here)

    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    # --8<-- [end:on-commit-unit]


def test_checkout_needs_a_login(client, db):
    response = client.post(reverse("payments:checkout"), checkout_form())
    assert response.status_code == 302
    assert not Order.objects.exists()


def test_provider_timeout_is_retryable():
    assert ProviderTimeout in process_payment.autoretry_for


def test_deploy_check_warns_when_production_would_charge_the_sandbox(settings):
    from ..checks import check_payment_provider

    settings.STRIPE_SECRET_KEY, settings.PAYMENTS_ALLOW_SANDBOX = "", False
    assert [warning.id for warning in check_payment_provider(None)] == ["payments.W001"]
    settings.STRIPE_SECRET_KEY = "sk_live_x"
    assert check_payment_provider(None) == []


def test_deploy_check_warns_when_stripe_webhooks_cannot_be_verified(settings):
    from ..checks import check_stripe_webhook

    settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = "sk_live_x", ""
    assert [warning.id for warning in check_stripe_webhook(None)] == ["payments.W002"]
    settings.STRIPE_WEBHOOK_SECRET = "whsec_x"
    assert check_stripe_webhook(None) == []
    settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = "", ""  # the sandbox has no webhooks
    assert check_stripe_webhook(None) == []


# ------------------------------------------------------------------------------
# The sandbox's test cards: decline, 3-D Secure, and a request refused for good.
# ------------------------------------------------------------------------------
def test_sandbox_test_card_declines_with_the_reason_shown(user, client):
    order = Order.objects.create(user=user, amount_cents=4200, payment_method="pm_card_chargeDeclined")

    assert process_payment(order.pk) == "declined"

    order.refresh_from_db()
    assert (order.status, order.failure_reason) == (Order.Status.FAILED, "Your card was declined.")
    client.force_login(user)
    assert "Your card was declined." in client.get(reverse("payments:order", args=[order.pk])).text
    assert not SandboxCharge.objects.exists()


def test_sandbox_3d_secure_waits_for_the_customer_then_pays_once(user, client, django_capture_on_commit_callbacks):
    order = Order.objects.create(user=user, amount_cents=4200, payment_method="pm_card_threeDSecure2Required")

    assert process_payment(order.pk) == "requires-action"
    assert process_payment(order.pk) == "skipped-requires_action"  # a redelivery charges nothing

    order.refresh_from_db()
    assert order.status == Order.Status.REQUIRES_ACTION
    assert not SandboxCharge.objects.exists()  # not charged until authenticated
    client.force_login(user)
    page = client.get(reverse("payments:order", args=[order.pk])).text
    assert "Action required" in page
    assert order.next_action_url in page

    with django_capture_on_commit_callbacks(execute=True):  # the view sends sync_payment through the outbox
        response = client.post(order.next_action_url, {"result": "succeed"})  # the bank's page, sandboxed

    assert response.url == reverse("payments:order", args=[order.pk])
    order.refresh_from_db()
    assert (order.status, order.next_action_url) == (Order.Status.PAID, "")
    assert SandboxCharge.objects.get().charge_id == order.charge_id


def test_sandbox_3d_secure_failed_fails_the_order(user, client, django_capture_on_commit_callbacks):
    order = Order.objects.create(user=user, amount_cents=4200, payment_method="pm_card_threeDSecure2Required")
    process_payment(order.pk)
    order.refresh_from_db()
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(order.next_action_url, {"result": "fail"})

    order.refresh_from_db()
    assert order.status == Order.Status.FAILED
    assert "authentication failed" in order.failure_reason
    assert not SandboxCharge.objects.exists()


@pytest.mark.parametrize(
    ("payment_method", "plan", "message"),
    [("pm_card_bogus", (), "No such PaymentMethod"), ("pm_card_visa", ("reject",), "400 invalid request")],
    ids=["unknown-payment-method", "scripted"],
)
def test_a_refused_request_fails_the_order_for_good_with_one_dead_letter(
    user, sandbox, eager_retries, payment_method, plan, message
):
    order = Order.objects.create(user=user, amount_cents=4200, payment_method=payment_method)
    sandbox.plan(order.idempotency_key, *plan)

    assert process_payment.apply((order.pk,), throw=False).failed()

    order.refresh_from_db()
    assert order.status == Order.Status.FAILED
    assert order.payment_attempts == 1  # not retried
    failed = FailedTask.objects.get()
    assert failed.exception_type.endswith("PaymentRejected")
    assert message in failed.exception_message
    assert not SandboxCharge.objects.exists()
