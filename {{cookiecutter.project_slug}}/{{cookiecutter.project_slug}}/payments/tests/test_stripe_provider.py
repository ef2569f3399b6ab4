"""StripeProvider against a fake of Stripe's HTTP API (the network is not ours to use in tests).

The fake sits behind stripe-python's own HTTPClient interface, so the real client
builds the requests and parses the answers.
"""

import json
from urllib.parse import parse_qs

import pytest
import stripe

from ..providers import CardDeclined, ProviderTimeout, ProviderUnavailable, StripeProvider


class FakeStripe(stripe.HTTPClient):
    name = "fake"

    def __init__(self, status=200, body=None, error=None):
        super().__init__()
        self.status, self.body, self.error = status, body, error
        self.requests = []

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        self.requests.append({"method": method, "url": url, "headers": dict(headers), "data": parse_qs(post_data)})
        if self.error:
            raise self.error
        return json.dumps(self.body), self.status, {"request-id": "req_fake"}

    def close(self):
        pass


INTENT = {"id": "pi_123", "object": "payment_intent", "amount": 4200, "currency": "eur", "status": "succeeded"}


def test_charge_sends_the_idempotency_key_and_amount(settings):
    fake = FakeStripe(body=INTENT)
    charge = StripeProvider("sk_test_fake", http_client=fake).charge(
        amount_cents=4200, currency="EUR", idempotency_key="key-1", payment_method="pm_card_visa"
    )
    assert (charge.id, charge.amount_cents, charge.currency) == ("pi_123", 4200, "EUR")
    (sent,) = fake.requests
    assert sent["url"].endswith("/v1/payment_intents")
    assert sent["headers"]["Idempotency-Key"] == "key-1"
    assert sent["data"]["amount"] == ["4200"]
    assert sent["data"]["confirm"] == ["true"]


@pytest.mark.parametrize(
    ("fake", "error"),
    [
        (FakeStripe(402, {"error": {"type": "card_error", "code": "card_declined", "message": "no"}}), CardDeclined),
        (FakeStripe(429, {"error": {"type": "invalid_request_error", "message": "slow down"}}), ProviderUnavailable),
        (FakeStripe(500, {"error": {"type": "api_error", "message": "boom"}}), ProviderUnavailable),
        (FakeStripe(error=stripe.APIConnectionError("read timed out")), ProviderTimeout),
    ],
    ids=["declined", "rate-limited", "server-error", "timeout"],
)
def test_stripe_errors_map_to_what_the_task_may_do(fake, error):
    with pytest.raises(error):
        StripeProvider("sk_test_fake", http_client=fake).charge(amount_cents=100, currency="EUR", idempotency_key="k")
