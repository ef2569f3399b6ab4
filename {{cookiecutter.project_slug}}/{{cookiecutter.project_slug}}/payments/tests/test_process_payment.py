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
from ..providers import PaymentsNotConfigured, ProviderTimeout, SandboxProvider
from ..tasks import process_payment, reconcile_stuck_payments


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


def test_an_earlier_charge_for_another_amount_does_not_pay_the_order(order, eager_retries):
    """The key returns the first charge, but the order's amount was changed by hand since: a person decides."""
    process_payment(order.pk)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PROCESSING, charge_id="", amount_cents=100_000)

    assert process_payment.apply((order.pk,), throw=False).failed()

    order.refresh_from_db()
    assert (order.status, order.charge_id) == (Order.Status.FAILED, "")
    (dead_letter,) = FailedTask.objects.all()
    assert dead_letter.exception_type.endswith(".tasks.PaymentMismatch")
    assert "is 42.00 EUR, the order 1000.00 EUR" in dead_letter.exception_message
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


def test_deploy_check_fails_without_a_provider_and_warns_about_an_allowed_sandbox(settings):
    from django.core import checks

    from ..checks import check_payment_provider

    settings.STRIPE_SECRET_KEY, settings.PAYMENTS_ALLOW_SANDBOX = "", False  # production's default
    (error,) = check_payment_provider(None)
    assert (error.id, error.level) == ("payments.E001", checks.ERROR)
    assert "checkout refuses every order" in error.msg
    settings.PAYMENTS_ALLOW_SANDBOX = True  # a staging site, on purpose: said on every deploy
    (warning,) = check_payment_provider(None)
    assert (warning.id, warning.level) == ("payments.W001", checks.WARNING)
    assert "no money is taken" in warning.msg
    settings.STRIPE_SECRET_KEY = "sk_live_x"
    assert check_payment_provider(None) == []


def test_without_a_provider_a_payment_charges_nothing_and_waits_for_one(order, settings, caplog):
    """Production without a Stripe key, the sandbox not allowed: no pretend charge, no
    dead letter per cycle. The task fails (its one dead letter replays the payment once
    payments are configured), the order stays as it was, reconciliation sends nothing."""
    settings.STRIPE_SECRET_KEY, settings.PAYMENTS_ALLOW_SANDBOX = "", False

    with pytest.raises(PaymentsNotConfigured, match="PAYMENTS_ALLOW_SANDBOX=true"):
        process_payment(order.pk)

    order.refresh_from_db()
    assert (order.status, order.payment_attempts, order.charge_id) == (Order.Status.PENDING, 0, "")
    assert not SandboxCharge.objects.exists()
    Order.objects.filter(pk=order.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    assert reconcile_stuck_payments() == []
    assert "Payments are not configured" in caplog.text

    settings.PAYMENTS_ALLOW_SANDBOX = True  # configured (a restart later): the replay pays
    assert process_payment(order.pk) == "paid"


def test_startup_says_when_payments_are_not_configured(settings, caplog):
    from django.apps import apps

    apps.get_app_config("payments").ready()
    assert "Payments are not configured" not in caplog.text  # the sandbox, in tests

    settings.STRIPE_SECRET_KEY, settings.PAYMENTS_ALLOW_SANDBOX = "", False
    apps.get_app_config("payments").ready()
    (record,) = [record for record in caplog.records if "Payments are not configured" in record.message]
    assert record.levelname == "ERROR"


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


def test_a_refused_request_fails_the_order_for_good_with_one_dead_letter(user, sandbox, eager_retries):
    order = Order.objects.create(user=user, amount_cents=4200, payment_method="pm_card_visa")
    sandbox.plan(order.idempotency_key, "reject")  # as for a bug of ours: an invalid request

    assert process_payment.apply((order.pk,), throw=False).failed()

    order.refresh_from_db()
    assert order.status == Order.Status.FAILED
    assert order.payment_attempts == 1  # not retried
    failed = FailedTask.objects.get()
    assert failed.exception_type.endswith("PaymentRejected")
    assert "400 invalid request" in failed.exception_message
    assert not SandboxCharge.objects.exists()


def test_an_unknown_payment_method_fails_the_order_without_a_dead_letter(user, sandbox, eager_retries, caplog):
    """The customer's input (say, a made-up id posted past the form): their problem, like a
    decline, not an operator's alert. Stripe's "No such PaymentMethod" is answered alike."""
    order = Order.objects.create(user=user, amount_cents=4200, payment_method="pm_card_bogus")

    assert process_payment.apply((order.pk,), throw=False).get() == "payment-method-refused"

    order.refresh_from_db()
    assert (order.status, order.payment_attempts) == (Order.Status.FAILED, 1)
    assert "payment method could not be used" in order.failure_reason
    assert not FailedTask.objects.exists()
    assert not SandboxCharge.objects.exists()
    assert "No such PaymentMethod: 'pm_card_bogus'" in caplog.text  # the detail, for whoever looks


@pytest.mark.parametrize("result", ["succeed", "fail"])
def test_a_settled_3d_secure_page_posted_again_shows_the_order(
    user, client, django_capture_on_commit_callbacks, result
):
    """A second POST of the sandbox's bank page (the back button, a tab left open for a day,
    by when the sandbox forgot the payment it held for authentication) is not a 500."""
    order = Order.objects.create(user=user, amount_cents=4200, payment_method="pm_card_threeDSecure2Required")
    process_payment(order.pk)
    order.refresh_from_db()
    page = order.next_action_url
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(page, {"result": result})
    order.refresh_from_db()
    settled = order.status
    assert settled in (Order.Status.PAID, Order.Status.FAILED)
    SandboxProvider().redis.delete(f"payments:sandbox:intent:{order.charge_id}")  # a day later

    for again in ("succeed", "fail"):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(page, {"result": again})
        assert (response.status_code, response.url) == (302, reverse("payments:order", args=[order.pk]))
    assert client.get(page).url == reverse("payments:order", args=[order.pk])

    order.refresh_from_db()
    assert order.status == settled
    assert SandboxCharge.objects.count() == (1 if result == "succeed" else 0)


def test_the_sandbox_answers_a_settled_authentication_from_its_ledger(order, sandbox):
    order.payment_method = "pm_card_threeDSecure2Required"
    order.save()
    process_payment(order.pk)
    order.refresh_from_db()
    sandbox.authenticate(order.charge_id, succeed=True)
    sandbox.redis.delete(f"payments:sandbox:intent:{order.charge_id}")  # forgotten after PENDING_TTL

    assert sandbox.authenticate(order.charge_id, succeed=False).provider_status == "succeeded"
