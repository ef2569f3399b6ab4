"""The payment task, the webhook and reconciliation with Stripe: StripeProvider, the real stripe
client, and the fake Stripe of fake_stripe.py over HTTP (eager tasks; real workers in
tests/test_payments_integration.py)."""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import TestCase
from django.urls import reverse
from django.utils import timezone

from {{ cookiecutter.project_slug }}.core.models import FailedTask

from ..models import Order
from ..providers import get_provider
from ..tasks import payment_metadata, process_payment, sync_payment
from ..tasks import reconcile_stuck_payments as reconcile_task
from .fake_stripe import sign


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


@pytest.fixture
def order_with(user, stripe_payments):
    def make(payment_method="pm_card_visa"):
        return Order.objects.create(user=user, amount_cents=4200, payment_method=payment_method)

    return make


def refreshed(order):
    order.refresh_from_db()
    return order


def post_event(client, body, signature):
    """Stripe's POST; what the view sends through the outbox runs (eagerly) after its COMMIT."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.post(
            reverse("payments:stripe-webhook"), body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
        )


def reconcile_stuck_payments() -> list[int]:
    """Beat's reconciliation run; what it sends through the outbox runs (eagerly) after its COMMIT."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return reconcile_task()


def age(order, **delta):
    """Pretend the order has not changed for a while (reconciliation's clock)."""
    Order.objects.filter(pk=order.pk).update(updated_at=timezone.now() - timedelta(**delta))


def test_only_succeeded_pays(order_with, stripe_payments):
    order = order_with("pm_card_visa")

    assert process_payment(order.pk) == "paid"

    order = refreshed(order)
    assert (order.status, order.provider_status) == (Order.Status.PAID, "succeeded")
    assert order.charge_id == next(iter(stripe_payments.intents))


@pytest.mark.parametrize(
    ("intent_status", "order_status"),
    [
        ("processing", Order.Status.PROCESSING),
        ("requires_capture", Order.Status.PROCESSING),
        ("requires_payment_method", Order.Status.FAILED),
        ("requires_confirmation", Order.Status.FAILED),
        ("canceled", Order.Status.FAILED),
    ],
)
def test_intermediate_statuses_do_not_pay(order_with, stripe_payments, intent_status, order_status):
    stripe_payments.outcomes["pm_card_special"] = intent_status
    order = order_with("pm_card_special")

    process_payment(order.pk)

    order = refreshed(order)
    assert (order.status, order.provider_status) == (order_status, intent_status)
    assert order.paid_at is None
    assert order.charge_id  # the PaymentIntent is known: reconciliation can ask about it


# --8<-- [start:three-d-secure]
def test_3d_secure_then_a_signed_webhook_pays_the_order(order_with, stripe_payments, client):
    order = order_with("pm_card_threeDSecure2Required")

    assert process_payment(order.pk) == "requires-action"

    order = refreshed(order)
    assert order.status == Order.Status.REQUIRES_ACTION
    assert order.next_action_url.startswith(stripe_payments.url)  # where the customer authenticates
    client.force_login(order.user)
    assert order.next_action_url in client.get(reverse("payments:order", args=[order.pk])).text

    stripe_payments.finish_action(order.charge_id)  # the customer passed 3-D Secure
    response = post_event(client, *stripe_payments.event("payment_intent.succeeded", order.charge_id))

    assert response.status_code == 204
    order = refreshed(order)
    assert (order.status, order.next_action_url) == (Order.Status.PAID, "")
    assert stripe_payments.creates() == 1
    # --8<-- [end:three-d-secure]


def test_3d_secure_failed_fails_the_order_with_the_reason_shown(order_with, stripe_payments, client):
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    order = refreshed(order)

    stripe_payments.finish_action(order.charge_id, succeed=False)
    post_event(client, *stripe_payments.event("payment_intent.payment_failed", order.charge_id))

    order = refreshed(order)
    assert order.status == Order.Status.FAILED
    client.force_login(order.user)
    assert "unable to authenticate" in client.get(reverse("payments:order", args=[order.pk])).text


def test_a_decline_fails_the_order_with_the_reason_and_no_dead_letter(order_with):
    order = order_with("pm_card_chargeDeclined")

    assert process_payment(order.pk) == "declined"

    order = refreshed(order)
    assert (order.status, order.failure_reason) == (Order.Status.FAILED, "Your card was declined.")
    assert not FailedTask.objects.exists()


def test_a_made_up_payment_method_fails_the_order_without_a_dead_letter(order_with, stripe_payments, eager_retries):
    """Well-formed, so the form let it through, but no PaymentMethod of the account: Stripe's
    400 "No such PaymentMethod" is the customer's input refused, not an operator's alert."""
    order = order_with("pm_1MadeUpByTheCustomer0000")

    assert process_payment.apply((order.pk,), throw=False).get() == "payment-method-refused"

    order = refreshed(order)
    assert (order.status, order.payment_attempts) == (Order.Status.FAILED, 1)
    assert "payment method could not be used" in order.failure_reason
    assert not FailedTask.objects.exists()
    age(order, hours=1)
    assert reconcile_stuck_payments() == []  # settled: never sent again
    assert stripe_payments.creates() == 0


# --8<-- [start:webhook-signature]
@pytest.mark.parametrize(
    "forge",
    [
        lambda body, header: (body, sign(body, "whsec_someone_else", int(header[2:12]))),  # wrong secret
        lambda body, header: (body.replace(b"4200", b"1"), header),  # altered payload
        lambda body, header: (body, sign(body, "whsec_fake", int(header[2:12]) - 3600)),  # replayed an hour later
        lambda body, header: (body, ""),  # unsigned
    ],
    ids=["wrong-secret", "altered", "too-old", "unsigned"],
)
def test_a_badly_signed_webhook_is_refused_and_changes_nothing(order_with, stripe_payments, client, forge):
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    order = refreshed(order)
    stripe_payments.finish_action(order.charge_id)

    response = post_event(client, *forge(*stripe_payments.event("payment_intent.succeeded", order.charge_id)))

    assert response.status_code == 400
    assert refreshed(order).status == Order.Status.REQUIRES_ACTION
    # --8<-- [end:webhook-signature]


def test_a_replayed_webhook_changes_nothing(order_with, stripe_payments, client):
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    order = refreshed(order)
    stripe_payments.finish_action(order.charge_id)
    event = stripe_payments.event("payment_intent.succeeded", order.charge_id)

    assert post_event(client, *event).status_code == 204
    paid = refreshed(order)
    assert [post_event(client, *event).status_code for _ in range(3)] == [204] * 3

    again = refreshed(order)
    assert (again.status, again.paid_at, again.updated_at) == (Order.Status.PAID, paid.paid_at, paid.updated_at)
    assert stripe_payments.creates() == 1


def test_an_out_of_date_event_cannot_unpay_an_order(order_with, stripe_payments, client):
    """The event is only a prompt: the API says what is true now."""
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    order = refreshed(order)
    stale = stripe_payments.event("payment_intent.requires_action", order.charge_id)
    stripe_payments.finish_action(order.charge_id)
    post_event(client, *stripe_payments.event("payment_intent.succeeded", order.charge_id))

    post_event(client, *stale)

    assert refreshed(order).status == Order.Status.PAID


def test_webhook_without_a_configured_secret_refuses_events(order_with, stripe_payments, client, settings):
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    settings.STRIPE_WEBHOOK_SECRET = ""
    event = stripe_payments.event("payment_intent.succeeded", refreshed(order).charge_id)
    assert post_event(client, *event).status_code == 400


def test_an_event_that_arrives_before_our_answer_finds_the_order_by_its_metadata(order_with, stripe_payments, client):
    order = order_with("pm_card_visa")
    stripe_payments.script(("drop_after_create",))  # Stripe charged; our worker never heard
    with pytest.raises(Exception, match="Connection"):
        process_payment(order.pk)
    (intent_id,) = stripe_payments.intents

    post_event(client, *stripe_payments.event("payment_intent.succeeded", intent_id))

    order = refreshed(order)
    assert (order.status, order.charge_id) == (Order.Status.PAID, intent_id)


# ------------------------------------------------------------------------------
# Retries and dead letters.
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [("http", 429, "rate_limit_error", "Too many requests"), ("http", 502, "api_error", "Bad gateway"), ("drop",)],
    ids=["rate-limited", "5xx", "connection-lost"],
)
def test_transient_errors_are_retried_and_charge_once(order_with, stripe_payments, eager_retries, fault):
    order = order_with()
    stripe_payments.script(fault, fault)

    assert process_payment.apply((order.pk,), throw=False).get() == "paid"

    order = refreshed(order)
    assert (order.status, order.payment_attempts) == (Order.Status.PAID, 3)
    assert stripe_payments.creates() == 1
    assert not FailedTask.objects.exists()


def test_a_delivery_that_collides_with_one_at_stripe_ends_without_a_retry(order_with, stripe_payments):
    order = order_with()
    with stripe_payments.lock:  # another delivery of this payment is at Stripe right now
        stripe_payments.in_flight.add(str(order.idempotency_key))

    assert process_payment.apply((order.pk,), throw=False).get() == "in-progress-elsewhere"  # a 409, not a retry

    order = refreshed(order)
    assert (order.status, order.payment_attempts) == (Order.Status.PROCESSING, 1)
    assert stripe_payments.creates() == 0
    assert not FailedTask.objects.exists()
    with stripe_payments.lock:  # that delivery ends without an answer (its worker died): the redelivery pays
        stripe_payments.in_flight.clear()
    assert process_payment(order.pk) == "paid"


# --8<-- [start:permanent-errors]
def reused_key_with_other_parameters(order, fake):
    """Someone sent a different request with this order's key first (an IdempotencyError now)."""
    from ..providers import get_provider

    get_provider().charge(amount_cents=999, currency="EUR", idempotency_key=str(order.idempotency_key),
                          payment_method="pm_card_visa")  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda order, fake: fake.script(("http", 400, "invalid_request_error", "Invalid amount")), "InvalidRequest"),
        (lambda order, fake: fake.script(("http", 403, "invalid_request_error", "Not allowed")), "PermissionError"),
        (reused_key_with_other_parameters, "IdempotencyError"),
        ("revoked-key", "AuthenticationError"),
    ],
    ids=["invalid-request", "permission", "idempotency", "authentication"],
)
def test_permanent_errors_fail_the_order_for_good_with_one_dead_letter(
    order_with, stripe_payments, settings, eager_retries, setup, error
):
    order = order_with()
    if setup == "revoked-key":
        settings.STRIPE_SECRET_KEY = "sk_test_revoked"
    else:
        setup(order, stripe_payments)
    intents = stripe_payments.creates()

    assert process_payment.apply((order.pk,), throw=False).failed()

    order = refreshed(order)
    assert order.status == Order.Status.FAILED
    assert order.payment_attempts == 1  # no retry
    (failed,) = FailedTask.objects.all()  # exactly one dead letter
    assert error in failed.exception_message
    age(order, hours=1)
    assert reconcile_stuck_payments() == []  # never re-sent
    assert (FailedTask.objects.count(), stripe_payments.creates()) == (1, intents)
    # --8<-- [end:permanent-errors]


def test_exhausted_retries_leave_a_dead_letter_and_reconciliation_sends_it_again(
    order_with, stripe_payments, settings, eager_retries
):
    order = order_with()
    attempts = settings.TASK_RETRY_POLICY["max_retries"] + 1
    stripe_payments.script(*[("http", 503, "api_error", "Service unavailable")] * attempts)

    assert process_payment.apply((order.pk,), throw=False).failed()
    assert refreshed(order).status == Order.Status.PROCESSING  # unknown to us: not failed, not paid
    assert FailedTask.objects.count() == 1

    age(order, minutes=30)
    assert reconcile_stuck_payments() == [order.pk]
    assert refreshed(order).status == Order.Status.PAID
    assert stripe_payments.creates() == 1


# ------------------------------------------------------------------------------
# Reconciliation: every state an order can be stuck in.
# ------------------------------------------------------------------------------
# --8<-- [start:reconcile-polls]
def test_reconciliation_asks_stripe_when_the_webhook_never_came(order_with, stripe_payments):
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    stripe_payments.finish_action(refreshed(order).charge_id)  # paid at Stripe; the webhook was lost

    assert reconcile_stuck_payments() == []  # too recent: the webhook may still come
    age(order, minutes=30)
    assert reconcile_stuck_payments() == [order.pk]

    assert refreshed(order).status == Order.Status.PAID
    assert stripe_payments.creates() == 1
    # --8<-- [end:reconcile-polls]


def test_reconciliation_cancels_an_abandoned_authentication(order_with, stripe_payments, settings):
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)

    age(order, minutes=30)
    reconcile_stuck_payments()
    assert refreshed(order).status == Order.Status.REQUIRES_ACTION  # still time to authenticate

    age(order, minutes=settings.PAYMENT_ACTION_TIMEOUT_MINUTES + 1)
    reconcile_stuck_payments()

    order = refreshed(order)
    assert (order.status, order.provider_status) == (Order.Status.FAILED, "canceled")
    assert stripe_payments.intents[order.charge_id]["status"] == "canceled"


def test_reconciliation_settles_a_processing_payment(order_with, stripe_payments):
    stripe_payments.outcomes["pm_card_async"] = "processing"
    order = order_with("pm_card_async")
    process_payment(order.pk)
    stripe_payments.set_status(refreshed(order).charge_id, "succeeded")

    age(order, minutes=30)
    assert reconcile_stuck_payments() == [order.pk]

    assert refreshed(order).status == Order.Status.PAID
    assert stripe_payments.creates() == 1


def stuck_unsent(user, settings, **created_ago):
    """An order whose payment never got an answer: PROCESSING, no PaymentIntent id, unchanged for an hour."""
    order = Order.objects.create(user=user, amount_cents=4200, status=Order.Status.PROCESSING, payment_attempts=1)
    Order.objects.filter(pk=order.pk).update(
        created_at=timezone.now() - timedelta(**created_ago), updated_at=timezone.now() - timedelta(hours=1)
    )
    return order


def test_reconciliation_leaves_orders_past_the_idempotency_window_to_an_operator_once(user, settings, caplog):
    order = stuck_unsent(user, settings, hours=settings.PAYMENT_IDEMPOTENCY_WINDOW_HOURS + 1)

    assert reconcile_stuck_payments() == []
    assert reconcile_stuck_payments() == []  # the next cycle: nothing new

    assert refreshed(order).status == Order.Status.PROCESSING
    assert refreshed(order).reconcile_gave_up_at is not None
    (dead_letter,) = FailedTask.objects.all()
    assert (dead_letter.task_name, dead_letter.args) == (process_payment.name, [order.pk])
    assert "past the idempotency window" in dead_letter.exception_message
    assert caplog.text.count(f"order {order.pk} PROCESSING past the idempotency window") == 1


# --8<-- [start:reconcile-gives-up]
def test_reconciliation_gives_up_after_its_attempts_and_says_so_once(user, settings, caplog):
    """A provider down for hours: a bounded number of re-sends, then one dead letter and one log line."""
    from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage

    settings.PAYMENT_RECONCILE_MAX_ATTEMPTS = 3
    order = stuck_unsent(user, settings, hours=1)

    # Not run here (no captureOnCommitCallbacks): each re-sent payment stays unanswered.
    for cycle in range(1, 4):
        assert reconcile_task() == [order.pk]
        assert refreshed(order).reconcile_attempts == cycle
        OutboxMessage.objects.all().delete()  # published: the relay's part
    for _ in range(3):
        assert reconcile_task() == []

    assert refreshed(order).reconcile_attempts == 3
    (dead_letter,) = FailedTask.objects.all()
    assert dead_letter.args == [order.pk]
    assert "still not charged after 3 re-sends" in dead_letter.exception_message
    assert caplog.text.count("gave up, left to an operator") == 1
    # --8<-- [end:reconcile-gives-up]


# --8<-- [start:replay-past-window]
def test_a_payment_sent_again_after_stripe_forgot_its_key_finds_the_first_payment_intent(
    order_with, stripe_payments, settings
):
    """A dead letter replayed days later: the key no longer protects, the lookup does."""
    order = order_with("pm_card_visa")
    first = get_provider().charge(  # what the first attempt did before its answer was lost
        amount_cents=order.amount_cents,
        currency=order.currency,
        idempotency_key=str(order.idempotency_key),
        payment_method=order.payment_method,
        metadata=payment_metadata(order),
    )
    Order.objects.filter(pk=order.pk).update(
        status=Order.Status.PROCESSING,
        payment_attempts=1,
        created_at=timezone.now() - timedelta(hours=settings.PAYMENT_IDEMPOTENCY_WINDOW_HOURS + 48),
    )
    stripe_payments.forget_keys()  # two days later

    assert process_payment(order.pk) == "paid"

    assert refreshed(order).charge_id == first.id
    assert stripe_payments.creates() == 1  # not charged again
    # --8<-- [end:replay-past-window]


def test_a_payment_past_the_window_that_never_reached_stripe_is_charged(order_with, stripe_payments, settings):
    order = order_with("pm_card_visa")
    Order.objects.filter(pk=order.pk).update(
        status=Order.Status.PROCESSING,
        payment_attempts=1,
        created_at=timezone.now() - timedelta(hours=settings.PAYMENT_IDEMPOTENCY_WINDOW_HOURS + 48),
    )

    assert process_payment(order.pk) == "paid"

    assert stripe_payments.creates() == 1
    paths = [request["path"] for request in stripe_payments.requests]
    assert sum(path.startswith("/v1/payment_intents/search") for path in paths) == 1  # it looked first


# ------------------------------------------------------------------------------
# Whose payment: only this site's payment of the order, for its amount and
# currency, pays it. Another site on the same Stripe account has orders with the
# same ids.
# ------------------------------------------------------------------------------
def test_every_payment_names_the_order_and_this_site(order_with, stripe_payments, settings):
    order = order_with()

    process_payment(order.pk)

    (sent,) = stripe_payments.requests
    assert sent["params"]["metadata[order_id]"] == str(order.pk)
    assert sent["params"]["metadata[site]"] == settings.PAYMENTS_SITE_ID


def intent_naming(order, *, site: str | None = "ours", amount_cents: int = 4200, currency: str = "EUR") -> str:
    """A succeeded PaymentIntent on the same Stripe account whose metadata names ``order``; its id.

    ``site``: "ours" (PAYMENTS_SITE_ID), another site's id, or None (no site at all).
    """
    from django.conf import settings

    metadata = {"order_id": str(order.pk)}
    if site is not None:
        metadata["site"] = settings.PAYMENTS_SITE_ID if site == "ours" else site
    charge = get_provider().charge(
        amount_cents=amount_cents,
        currency=currency,
        idempotency_key=str(uuid.uuid4()),  # not the order's key: somebody else's request
        payment_method="pm_card_visa",
        metadata=metadata,
    )
    return charge.id


def answer_lost(order):
    """process_payment sent the order and never heard back: PROCESSING, no PaymentIntent id."""
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PROCESSING, payment_attempts=1)
    return refreshed(order)


def past_the_window(order, settings):
    """A payment sent two days ago, and its answer lost: Stripe has forgotten its key."""
    Order.objects.filter(pk=order.pk).update(
        status=Order.Status.PROCESSING,
        payment_attempts=1,
        created_at=timezone.now() - timedelta(hours=settings.PAYMENT_IDEMPOTENCY_WINDOW_HOURS + 48),
    )


# --8<-- [start:foreign-payment]
@pytest.mark.parametrize("site", ["another-shop.example", None], ids=["another-site", "no-site"])
def test_a_payment_intent_of_another_site_for_the_same_order_id_pays_nothing(
    order_with, stripe_payments, client, site
):
    """Another shop on our Stripe account took 0.50 USD for *its* order with our order's id."""
    order = answer_lost(order_with())
    theirs = intent_naming(order, site=site, amount_cents=50, currency="USD")

    assert post_event(client, *stripe_payments.event("payment_intent.succeeded", theirs)).status_code == 204

    assert (refreshed(order).status, refreshed(order).charge_id) == (Order.Status.PROCESSING, "")  # not adopted
    assert not FailedTask.objects.exists()  # not ours: nothing for an operator either
    age(order, minutes=30)
    assert reconcile_stuck_payments() == [order.pk]  # sent again, with our key: our own payment
    order = refreshed(order)
    assert (order.status, stripe_payments.intents[order.charge_id]["amount"]) == (Order.Status.PAID, 4200)
    # --8<-- [end:foreign-payment]


def test_a_payment_sent_again_after_stripe_forgot_its_key_ignores_another_sites_payment_intent(
    order_with, stripe_payments, settings
):
    order = order_with()
    theirs = intent_naming(order, site="another-shop.example", amount_cents=50, currency="USD")
    past_the_window(order, settings)

    assert process_payment(order.pk) == "paid"

    order = refreshed(order)
    assert order.charge_id != theirs
    assert stripe_payments.intents[order.charge_id]["amount"] == 4200
    assert stripe_payments.creates() == 2  # theirs, and ours


@pytest.mark.parametrize(("amount_cents", "currency"), [(50, "EUR"), (4200, "USD")], ids=["amount", "currency"])
def test_our_payment_intent_for_another_amount_or_currency_is_refused_by_the_webhook_with_a_dead_letter(
    order_with, stripe_payments, client, caplog, amount_cents, currency
):
    order = answer_lost(order_with())
    wrong = intent_naming(order, amount_cents=amount_cents, currency=currency)
    event = stripe_payments.event("payment_intent.succeeded", wrong)

    assert [post_event(client, *event).status_code for _ in range(2)] == [204, 204]  # 2xx: Stripe must not retry

    assert (refreshed(order).status, refreshed(order).charge_id) == (Order.Status.PROCESSING, "")
    (dead_letter,) = FailedTask.objects.all()  # one, however often Stripe tells us
    assert dead_letter.exception_type.endswith(".PaymentMismatch")
    paid = f"{amount_cents / 100:.2f} {currency}"
    assert f"payment {wrong} is {paid}, the order 42.00 EUR" in dead_letter.exception_message
    assert caplog.text.count("not accepted (dead letter)") == 1


def test_a_payment_sent_again_late_that_finds_ours_for_another_amount_fails_the_order_with_a_dead_letter(
    order_with, stripe_payments, settings, eager_retries
):
    order = order_with()
    wrong = intent_naming(order, amount_cents=50, currency="USD")
    past_the_window(order, settings)

    assert process_payment.apply((order.pk,), throw=False).failed()

    order = refreshed(order)
    assert (order.status, order.paid_at, order.charge_id) == (Order.Status.FAILED, None, "")
    assert "could not be verified" in order.failure_reason
    (dead_letter,) = FailedTask.objects.all()
    assert dead_letter.task_name == process_payment.name
    assert dead_letter.exception_type.endswith(".tasks.PaymentMismatch")
    assert f"payment {wrong} is 0.50 USD, the order 42.00 EUR" in dead_letter.exception_message
    assert stripe_payments.creates() == 1  # not charged again either: a person decides


def test_a_polled_payment_for_another_amount_than_the_orders_fails_it_with_a_dead_letter(
    order_with, stripe_payments, eager_retries
):
    """Ours by the PaymentIntent id the order holds, but the order's amount was changed by hand since."""
    order = order_with("pm_card_threeDSecure2Required")
    process_payment(order.pk)
    Order.objects.filter(pk=order.pk).update(amount_cents=100_000)
    stripe_payments.finish_action(refreshed(order).charge_id)

    assert sync_payment.apply((order.pk,), throw=False).failed()

    assert refreshed(order).status == Order.Status.FAILED
    (dead_letter,) = FailedTask.objects.all()
    assert "is 42.00 EUR, the order 1000.00 EUR" in dead_letter.exception_message
