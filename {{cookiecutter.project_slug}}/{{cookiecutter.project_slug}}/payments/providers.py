"""Payment providers behind one small interface: ``charge(...) -> Charge``.

``StripeProvider`` talks to Stripe (used when ``STRIPE_SECRET_KEY`` is set).
``SandboxProvider`` is the default in development and tests and behaves like a
real provider: it keeps its own ledger (``SandboxCharge``), a repeated
idempotency key returns the earlier charge without charging again, and it can be
told to decline, time out, be unavailable or be slow (``SandboxProvider.plan``).

Errors say what the caller may do: ``ProviderTimeout`` and ``ProviderUnavailable``
are worth retrying with the same idempotency key; ``CardDeclined`` is final.
"""

import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import redis
import stripe
from django.conf import settings
from django.db import IntegrityError

from {{ cookiecutter.project_slug }}.core.redis_client import shared_redis

from .models import SandboxCharge


class ProviderError(Exception):
    """The provider did not charge, or we cannot know."""


class ProviderTimeout(ProviderError):
    """No answer in time. The charge may or may not exist: retry with the same key."""


class ProviderUnavailable(ProviderError):
    """The provider refused to work right now (outage, rate limit): retry later."""


class CardDeclined(ProviderError):
    """A final answer: retrying will not change it."""


@dataclass(frozen=True)
class Charge:
    id: str
    amount_cents: int
    currency: str


class PaymentProvider(Protocol):
    def charge(
        self, *, amount_cents: int, currency: str, idempotency_key: str, payment_method: str = ""
    ) -> Charge: ...


class SandboxProvider:
    """A provider with a ledger and scripted behaviour, for development and tests.

    ``plan(key, "timeout", "ok")`` makes the next charges with that idempotency
    key time out once, then succeed. Behaviours, one per call, then "ok" forever:

    ``ok``                  charge (or return the earlier charge for this key)
    ``timeout``             raise ProviderTimeout without charging
    ``timeout_after_charge``  charge, then raise ProviderTimeout (the ambiguous case)
    ``unavailable``         raise ProviderUnavailable
    ``decline``             raise CardDeclined
    ``slow:<seconds>``      wait, then charge
    ``hang_after_charge:<seconds>``  charge, then wait (a window to kill the worker in)

    The plan lives in Redis so that every worker process sees it.
    """

    PLAN_TTL = 3600

    def __init__(self, client: redis.Redis | None = None):
        self.redis = client or shared_redis()

    @staticmethod
    def _plan_key(idempotency_key: str) -> str:
        return f"payments:sandbox:plan:{idempotency_key}"

    def plan(self, idempotency_key: str, *behaviours: str) -> None:
        key = self._plan_key(str(idempotency_key))
        with self.redis.pipeline() as pipe:
            pipe.delete(key)
            if behaviours:
                pipe.rpush(key, *behaviours)
                pipe.expire(key, self.PLAN_TTL)
            pipe.execute()

    def charge(self, *, amount_cents: int, currency: str, idempotency_key: str, payment_method: str = "") -> Charge:
        step = self.redis.lpop(self._plan_key(idempotency_key))
        behaviour, _, argument = (step.decode() if step else "ok").partition(":")
        if behaviour == "slow":
            time.sleep(float(argument))
        elif behaviour == "timeout":
            raise ProviderTimeout("sandbox: timed out before charging")
        elif behaviour == "unavailable":
            raise ProviderUnavailable("sandbox: 503 service unavailable")
        elif behaviour == "decline":
            raise CardDeclined("sandbox: card declined (insufficient funds)")

        charge = self._record(amount_cents, currency, idempotency_key)

        if behaviour == "timeout_after_charge":
            raise ProviderTimeout("sandbox: charged, but the answer was lost")
        if behaviour == "hang_after_charge":
            time.sleep(float(argument))
        return charge

    @staticmethod
    def _record(amount_cents: int, currency: str, idempotency_key: str) -> Charge:
        """One ledger row per idempotency key, also under concurrent calls."""
        try:
            row, _ = SandboxCharge.objects.get_or_create(
                idempotency_key=idempotency_key,
                defaults={
                    "charge_id": f"ch_{uuid.uuid4().hex[:24]}",
                    "amount_cents": amount_cents,
                    "currency": currency,
                },
            )
        except IntegrityError:  # lost a race with a concurrent call for the same key
            row = SandboxCharge.objects.get(idempotency_key=idempotency_key)
        return Charge(id=row.charge_id, amount_cents=row.amount_cents, currency=row.currency)


class StripeProvider:
    """Stripe PaymentIntents, confirmed at once, with our idempotency key."""

    def __init__(self, api_key: str, http_client: stripe.HTTPClient | None = None):
        # No client-side retries: Celery owns the retry policy (backoff, dead letter).
        self.client = stripe.StripeClient(
            api_key,
            max_network_retries=0,
            http_client=http_client or stripe.RequestsClient(timeout=settings.PAYMENT_PROVIDER_TIMEOUT),
        )

    def charge(self, *, amount_cents: int, currency: str, idempotency_key: str, payment_method: str = "") -> Charge:
        try:
            intent = self.client.v1.payment_intents.create(
                params={
                    "amount": amount_cents,
                    "currency": currency.lower(),
                    "payment_method": payment_method,
                    "confirm": True,
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as error:
            raise CardDeclined(error.user_message or str(error)) from error
        except stripe.APIConnectionError as error:
            raise ProviderTimeout(str(error)) from error
        except (stripe.RateLimitError, stripe.APIError) as error:
            raise ProviderUnavailable(str(error)) from error
        return Charge(id=intent.id, amount_cents=intent.amount, currency=intent.currency.upper())


def get_provider() -> PaymentProvider:
    if settings.STRIPE_SECRET_KEY:
        return StripeProvider(settings.STRIPE_SECRET_KEY)
    return SandboxProvider()
