"""StripeProvider and the real stripe client against a fake Stripe speaking HTTP (fake_stripe.py)."""

import pytest

from ..providers import (
    CardDeclined,
    Outcome,
    PaymentMethodRefused,
    PaymentRejected,
    ProviderTimeout,
    ProviderUnavailable,
    StripeProvider,
)
from .fake_stripe import API_KEY


@pytest.fixture
def provider(fake_stripe):
    return StripeProvider(API_KEY, api_base=fake_stripe.url)


def charge(provider, payment_method="pm_card_visa", key="key-1", amount_cents=4200, **extra):
    return provider.charge(
        amount_cents=amount_cents, currency="EUR", idempotency_key=key, payment_method=payment_method, **extra
    )


def test_charge_sends_the_idempotency_key_and_amount(provider, fake_stripe):
    result = charge(provider, metadata={"order_id": "7"})

    assert (result.amount_cents, result.currency, result.outcome) == (4200, "EUR", Outcome.SUCCEEDED)
    assert result.id.startswith("pi_")
    (sent,) = fake_stripe.requests
    assert (sent["method"], sent["path"], sent["key"]) == ("POST", "/v1/payment_intents", "key-1")
    assert sent["params"]["amount"] == "4200"
    assert sent["params"]["confirm"] == "true"
    assert sent["params"]["metadata[order_id]"] == "7"


def test_find_returns_only_a_payment_intent_with_all_the_metadata(provider, fake_stripe):
    charge(provider, key="theirs", metadata={"order_id": "7", "site": "another-shop.example"})
    charge(provider, key="nobodys", metadata={"order_id": "7"})
    assert provider.find(idempotency_key="ours", metadata={"order_id": "7", "site": "o'shop.example"}) is None

    ours = charge(provider, key="ours", metadata={"order_id": "7", "site": "o'shop.example"})  # a quote, escaped

    found = provider.find(idempotency_key="ours", metadata={"order_id": "7", "site": "o'shop.example"})
    assert (found.id, found.metadata) == (ours.id, {"order_id": "7", "site": "o'shop.example"})


def test_a_repeated_key_returns_the_same_payment_intent(provider, fake_stripe):
    first, again = charge(provider), charge(provider)

    assert first == again
    assert fake_stripe.creates() == 1
    assert charge(provider, key="key-2").id != first.id
    assert fake_stripe.creates() == 2


def test_the_same_key_with_other_parameters_is_refused_for_good(provider, fake_stripe):
    charge(provider, amount_cents=4200)
    with pytest.raises(PaymentRejected, match="IdempotencyError"):
        charge(provider, amount_cents=9900)
    assert fake_stripe.creates() == 1


# --8<-- [start:error-mapping]
@pytest.mark.parametrize(
    ("payment_method", "fault", "error"),
    [
        ("pm_card_chargeDeclined", None, CardDeclined),
        ("pm_card_visa", ("http", 429, "rate_limit_error", "Too many requests"), ProviderUnavailable),
        ("pm_card_visa", ("http", 500, "api_error", "Something went wrong"), ProviderUnavailable),
        ("pm_card_visa", ("http", 503, "api_error", "Service unavailable"), ProviderUnavailable),
        ("pm_card_visa", ("drop",), ProviderTimeout),
        ("pm_card_visa", ("drop_after_create",), ProviderTimeout),
        ("pm_card_nonexistent", None, PaymentMethodRefused),  # 400 resource_missing, param payment_method
        ("pm_card_visa", ("http", 400, "invalid_request_error", "Invalid currency: eur2"), PaymentRejected),
        ("pm_card_visa", ("http", 403, "invalid_request_error", "The key may not do this"), PaymentRejected),
    ],
    ids=[
        "declined",
        "rate-limited",
        "500",
        "503",
        "connection-lost",
        "lost-after-create",
        "no-such-payment-method",
        "invalid",
        "forbidden",
    ],
)
def test_stripe_errors_map_to_what_the_task_may_do(provider, fake_stripe, payment_method, fault, error):
    if fault:
        fake_stripe.script(fault)
    with pytest.raises(error):
        charge(provider, payment_method)
    # --8<-- [end:error-mapping]


def test_a_wrong_api_key_is_refused_for_good(fake_stripe):
    with pytest.raises(PaymentRejected, match="AuthenticationError"):
        charge(StripeProvider("sk_test_revoked", api_base=fake_stripe.url))


def test_a_decline_carries_the_reason_for_the_customer(provider):
    with pytest.raises(CardDeclined, match="insufficient funds"):
        charge(provider, "pm_card_chargeDeclinedInsufficientFunds")


def test_no_answer_in_time_is_a_timeout(provider, fake_stripe, settings):
    settings.PAYMENT_PROVIDER_TIMEOUT = 0.5
    fake_stripe.script(("slow", 2))
    with pytest.raises(ProviderTimeout):
        charge(StripeProvider(API_KEY, api_base=fake_stripe.url))


def test_a_lost_answer_is_retried_with_the_same_key_and_charges_once(provider, fake_stripe):
    fake_stripe.script(("drop_after_create",))
    with pytest.raises(ProviderTimeout):
        charge(provider)

    assert charge(provider).outcome == Outcome.SUCCEEDED
    assert fake_stripe.creates() == 1


def test_3d_secure_is_not_paid_but_requires_action(provider, fake_stripe):
    result = charge(provider, "pm_card_threeDSecure2Required", return_url="https://shop.example/orders/1/")

    assert (result.outcome, result.provider_status) == (Outcome.REQUIRES_ACTION, "requires_action")
    assert result.action_url.startswith(fake_stripe.url)
    fake_stripe.finish_action(result.id)
    assert provider.retrieve(result.id).outcome == Outcome.SUCCEEDED


def test_failed_authentication_is_a_failure_with_a_reason(provider, fake_stripe):
    result = charge(provider, "pm_card_threeDSecure2Required")
    fake_stripe.finish_action(result.id, succeed=False)

    failed = provider.retrieve(result.id)

    assert (failed.outcome, failed.provider_status) == (Outcome.FAILED, "requires_payment_method")
    assert "unable to authenticate" in failed.failure_reason


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("processing", Outcome.PROCESSING),
        ("requires_capture", Outcome.PROCESSING),
        ("requires_payment_method", Outcome.FAILED),
        ("requires_confirmation", Outcome.FAILED),
        ("canceled", Outcome.FAILED),
        ("succeeded", Outcome.SUCCEEDED),
    ],
)
def test_every_payment_intent_status_has_an_outcome(provider, fake_stripe, status, outcome):
    fake_stripe.outcomes["pm_card_special"] = status
    result = charge(provider, "pm_card_special")
    assert (result.outcome, result.provider_status) == (outcome, status)
    if outcome == Outcome.FAILED:
        assert result.failure_reason


def test_cancel_an_abandoned_authentication(provider):
    result = charge(provider, "pm_card_threeDSecure2Required")

    cancelled = provider.cancel(result.id)

    assert (cancelled.outcome, cancelled.provider_status) == (Outcome.FAILED, "canceled")
    assert "abandoned" in cancelled.failure_reason
    with pytest.raises(PaymentRejected):  # Stripe refuses to cancel twice
        provider.cancel(result.id)
