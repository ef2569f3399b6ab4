"""Payment providers behind one small interface: ``charge``, ``retrieve``, ``cancel``, ``find``.

``StripeProvider`` talks to Stripe (used when ``STRIPE_SECRET_KEY`` is set).
``SandboxProvider`` is the default in development and tests (production runs it
only with ``PAYMENTS_ALLOW_SANDBOX=true``, see ``provider_name``) and behaves like a
real provider: it keeps its own ledger (``SandboxCharge``), a repeated
idempotency key returns the earlier charge without charging again, it
understands Stripe's test cards (``pm_card_visa``, ``pm_card_chargeDeclined``,
``pm_card_threeDSecure2Required`` ...) and it can be told to time out, be
unavailable or be slow (``SandboxProvider.plan``).

A provider answers with a ``Charge`` whose ``outcome`` says where the payment
stands (paid, waiting for the customer, still processing, failed), or raises an
error that says what the caller may do:

* ``ProviderTimeout``, ``ProviderUnavailable``: retry later, with the same key;
* ``PaymentInProgress``: another delivery of this payment is at the provider
  right now and will record the outcome: stop, do not retry;
* ``CardDeclined``: final, the customer's problem (order FAILED, reason shown);
* ``PaymentMethodRefused``: final, the customer's problem too: the payment method
  they sent does not exist at the provider (order FAILED, no dead letter);
* ``PaymentRejected``: final, *our* problem (a bad request, a revoked key): the
  order fails, and the task fails loudly so that an operator gets a dead letter;
* ``PaymentsNotConfigured``: there is no provider (production without a Stripe
  key, the sandbox not allowed): nothing is charged, the task fails loudly.
"""

import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

import redis
import stripe
from django.conf import settings
from django.db import IntegrityError
from django.urls import reverse
from django.utils import timezone

from {{ cookiecutter.project_slug }}.core.redis_client import shared_redis

from .models import SandboxCharge


class ProviderError(Exception):
    """The provider did not charge, or we cannot know."""


class ProviderTimeout(ProviderError):
    """No answer in time. The charge may or may not exist: retry with the same key."""


class ProviderUnavailable(ProviderError):
    """The provider refused to work right now (outage, rate limit): retry later."""


class PaymentInProgress(ProviderError):
    """Another request with this idempotency key is running at the provider right now:
    a second delivery of the same payment. That request records the outcome; this one
    has nothing to add (and retrying only collides again while the first is slow)."""


class CardDeclined(ProviderError):
    """A final answer: retrying will not change it."""


class PaymentMethodRefused(ProviderError):
    """The provider knows no such payment method (Stripe: a 400 about ``payment_method``).

    The id comes from the customer's browser: the form checks its shape, only the
    provider knows whether it exists. Final, and the customer's doing, like a decline:
    the order fails, and no dead letter is written for it."""


class PaymentsNotConfigured(ProviderError):
    """No provider: production without STRIPE_SECRET_KEY, and the sandbox not allowed."""


class PaymentRejected(ProviderError):
    """The provider refused the request itself: invalid, unauthorised, forbidden, or
    an idempotency key reused with other parameters. A bug or a configuration error:
    retrying sends the same request and gets the same answer."""


class Outcome(StrEnum):
    """Where a payment stands, in our words (each provider maps its own statuses)."""

    SUCCEEDED = "succeeded"  # money taken: the order is PAID
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure)
    PROCESSING = "processing"  # the provider has not decided yet: ask again later
    FAILED = "failed"  # no money taken, and none will be for this payment


@dataclass(frozen=True)
class Charge:
    id: str
    amount_cents: int
    currency: str
    outcome: Outcome = Outcome.SUCCEEDED
    # The provider's own word for the state (Stripe: the PaymentIntent status).
    provider_status: str = "succeeded"
    # REQUIRES_ACTION: where the customer authenticates.
    action_url: str = ""
    # FAILED: why, in words for the customer.
    failure_reason: str = ""
    # Whose payment this is (tasks.mismatch): the idempotency key of the request the
    # provider answered with it, when known, and the metadata it carries (Stripe: the
    # PaymentIntent's; the sandbox keeps none, its payments are known by their key).
    idempotency_key: str = ""
    metadata: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def amount(self) -> Decimal:
        return Decimal(self.amount_cents) / 100


class PaymentProvider(Protocol):
    def charge(
        self,
        *,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        payment_method: str = "",
        return_url: str = "",
        metadata: dict[str, str] | None = None,
    ) -> Charge: ...

    def retrieve(self, charge_id: str) -> Charge: ...

    def cancel(self, charge_id: str) -> Charge: ...

    def find(self, *, idempotency_key: str, metadata: dict[str, str]) -> Charge | None:
        """The payment an earlier request for this order created, or None.

        For a payment sent again after the provider forgot its idempotency key
        (Stripe: 24 hours): then only a lookup tells whether the first request charged.
        Only a payment made with this key, or carrying all of this metadata (the order
        *and* this site: one provider account may serve several sites), is an answer.
        """


@contextmanager
def sandbox_store_errors():
    """The sandbox's Redis failing mid-call is the sandbox's outage: a timeout.

    Plans and payments waiting for authentication live in Redis, so a Redis
    restart (or a replica still loading its data) reaches the caller as a
    ``redis.ConnectionError`` in the middle of a payment. Let through, it would fail
    the task for good and leave a dead letter for a blip. Like ``stripe_errors``
    with a lost connection, we cannot know whether the call did its work: retry
    with the same key. Used as a decorator on every call of the provider.
    """
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as error:  # BusyLoadingError is a ConnectionError
        raise ProviderTimeout(f"sandbox: its store did not answer: {error}") from error


class SandboxProvider:
    """A provider with a ledger and scripted behaviour, for development and tests.

    The payment method decides the answer, as with Stripe's test cards:

    ``pm_card_visa`` (or none)        charged
    ``pm_card_chargeDeclined``        declined (also ``...InsufficientFunds``)
    ``pm_card_threeDSecure2Required`` REQUIRES_ACTION: the customer authenticates on
                                      the sandbox's own page (``authenticate``), then
                                      the payment succeeds or fails
    anything else                     ``PaymentMethodRefused`` ("No such PaymentMethod"),
                                      as Stripe answers an unknown one

    ``plan(key, "timeout", "ok")`` makes the next charges with that idempotency
    key time out once, then succeed. Behaviours, one per call, then "ok" forever:

    ``ok``                  charge (or return the earlier charge for this key)
    ``timeout``             raise ProviderTimeout without charging
    ``timeout_after_charge``  charge, then raise ProviderTimeout (the ambiguous case)
    ``unavailable``         raise ProviderUnavailable
    ``decline``             raise CardDeclined
    ``reject``              raise PaymentRejected (as for an invalid request)
    ``slow:<seconds>``      wait, then charge
    ``hang_after_charge:<seconds>``  charge, then wait (a window to kill the worker in)

    Plans and payments waiting for authentication live in Redis so that every
    worker process (and the web process) sees them; accepted charges live in the
    ledger, one ``SandboxCharge`` row each. Redis failing mid-call raises
    ``ProviderTimeout``, as a real provider's outage would (``sandbox_store_errors``).
    """

    PLAN_TTL = 3600
    PENDING_TTL = 24 * 3600
    # How long an idempotency key is remembered, as with Stripe.
    KEY_TTL = timedelta(hours=24)
    TEST_CARDS = {
        "": "ok",
        "pm_card_visa": "ok",
        "pm_card_mastercard": "ok",
        "pm_card_chargeDeclined": "decline:Your card was declined.",
        "pm_card_chargeDeclinedInsufficientFunds": "decline:Your card has insufficient funds.",
        "pm_card_threeDSecure2Required": "authenticate",
    }

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

    @sandbox_store_errors()
    def charge(
        self,
        *,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        payment_method: str = "",
        return_url: str = "",
        metadata: dict[str, str] | None = None,
    ) -> Charge:
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
        elif behaviour == "reject":
            raise PaymentRejected("sandbox: 400 invalid request")

        card = self.TEST_CARDS.get(payment_method)
        if card is None:
            raise PaymentMethodRefused(f"No such PaymentMethod: {payment_method!r}")
        if card.startswith("decline:"):
            raise CardDeclined(card.removeprefix("decline:"))
        if card == "authenticate":
            charge = self._authentication_for(amount_cents, currency, idempotency_key)
        else:
            charge = self._record(amount_cents, currency, idempotency_key)

        if behaviour == "timeout_after_charge":
            raise ProviderTimeout("sandbox: charged, but the answer was lost")
        if behaviour == "hang_after_charge":
            time.sleep(float(argument))
        return charge

    @sandbox_store_errors()
    def retrieve(self, charge_id: str) -> Charge:
        row = SandboxCharge.objects.filter(charge_id=charge_id).first()
        if row is not None:
            return self._ledger_charge(row)
        pending = self._pending(charge_id)
        if pending is None:
            raise PaymentRejected(f"No such payment: {charge_id!r}")
        return self._pending_charge(charge_id, pending)

    @sandbox_store_errors()
    def cancel(self, charge_id: str) -> Charge:
        pending = self._pending(charge_id)
        if pending is None or pending["status"] != "requires_action":
            raise PaymentRejected(f"sandbox: payment {charge_id!r} cannot be cancelled")
        pending |= {"status": "canceled", "reason": "The payment was cancelled: authentication not completed."}
        self._save_pending(charge_id, pending)
        return self._pending_charge(charge_id, pending)

    @sandbox_store_errors()
    def find(self, *, idempotency_key: str, metadata: dict[str, str]) -> Charge | None:
        """The latest charge, or payment waiting for authentication, made with this key.

        The ledger knows its charges by key, forgotten or not (Stripe searches
        PaymentIntents by the order id in their metadata instead).
        """
        if row := SandboxCharge.objects.filter(idempotency_key=idempotency_key).order_by("-created_at").first():
            return self._ledger_charge(row)
        if charge_id := self.redis.get(f"payments:sandbox:auth:{idempotency_key}"):
            return self.retrieve(charge_id.decode())
        return None

    @sandbox_store_errors()
    def authenticate(self, charge_id: str, *, succeed: bool) -> Charge:
        """The customer passes (or fails) authentication: what the bank's 3-D Secure page does."""
        pending = self._pending(charge_id)
        if pending is None:  # forgotten after PENDING_TTL: a charge's ledger row still answers
            return self.retrieve(charge_id)
        if pending["status"] == "requires_action":
            if succeed:
                self._record(pending["amount_cents"], pending["currency"], pending["key"], charge_id=charge_id)
                pending["status"] = "succeeded"
            else:
                pending |= {"status": "requires_payment_method", "reason": "3-D Secure authentication failed."}
            self._save_pending(charge_id, pending)
        return self.retrieve(charge_id)

    # Payments waiting for authentication: not charges (yet), so not in the ledger.
    def _authentication_for(self, amount_cents: int, currency: str, idempotency_key: str) -> Charge:
        self._forget_expired(idempotency_key)
        if row := SandboxCharge.objects.filter(idempotency_key=idempotency_key, key_forgotten=False).first():
            return self._ledger_charge(row)
        candidate = f"pi_sandbox_{uuid.uuid4().hex[:24]}"
        # SET NX: concurrent calls with one key agree on one payment.
        self.redis.set(f"payments:sandbox:auth:{idempotency_key}", candidate, nx=True, ex=self.PENDING_TTL)
        charge_id = self.redis.get(f"payments:sandbox:auth:{idempotency_key}").decode()
        pending = self._pending(charge_id)
        if pending is None:
            pending = {"key": idempotency_key, "amount_cents": amount_cents, "currency": currency}
            pending |= {"status": "requires_action", "reason": ""}
            self._save_pending(charge_id, pending)
        return self._pending_charge(charge_id, pending)

    def _pending(self, charge_id: str) -> dict | None:
        raw = self.redis.get(f"payments:sandbox:intent:{charge_id}")
        return json.loads(raw) if raw else None

    def _save_pending(self, charge_id: str, pending: dict) -> None:
        self.redis.set(f"payments:sandbox:intent:{charge_id}", json.dumps(pending), ex=self.PENDING_TTL)

    @staticmethod
    def _ledger_charge(row: SandboxCharge) -> Charge:
        return Charge(
            id=row.charge_id, amount_cents=row.amount_cents, currency=row.currency, idempotency_key=row.idempotency_key
        )

    @staticmethod
    def _pending_charge(charge_id: str, pending: dict) -> Charge:
        status = pending["status"]
        action_url = reverse("payments:sandbox-authenticate", args=[charge_id]) if status == "requires_action" else ""
        return Charge(
            id=charge_id,
            amount_cents=pending["amount_cents"],
            currency=pending["currency"],
            outcome=STRIPE_OUTCOMES[status],  # the sandbox speaks Stripe's statuses
            provider_status=status,
            action_url=action_url,
            failure_reason=pending["reason"],
            idempotency_key=pending["key"],
        )

    @classmethod
    def _forget_expired(cls, idempotency_key: str) -> None:
        """A key older than KEY_TTL is forgotten: a repeat of it is a new request."""
        SandboxCharge.objects.filter(
            idempotency_key=idempotency_key, key_forgotten=False, created_at__lt=timezone.now() - cls.KEY_TTL
        ).update(key_forgotten=True)

    @classmethod
    def _record(cls, amount_cents: int, currency: str, idempotency_key: str, charge_id: str = "") -> Charge:
        """One ledger row per remembered idempotency key, also under concurrent calls."""
        cls._forget_expired(idempotency_key)
        try:
            row, _ = SandboxCharge.objects.get_or_create(
                idempotency_key=idempotency_key,
                key_forgotten=False,
                defaults={
                    "charge_id": charge_id or f"ch_{uuid.uuid4().hex[:24]}",
                    "amount_cents": amount_cents,
                    "currency": currency,
                },
            )
        except IntegrityError:  # lost a race with a concurrent call for the same key
            row = SandboxCharge.objects.get(idempotency_key=idempotency_key, key_forgotten=False)
        return cls._ledger_charge(row)


# --8<-- [start:stripe-statuses]
# Stripe's PaymentIntent statuses, in our words. Only "succeeded" means paid.
# https://docs.stripe.com/payments/paymentintents/lifecycle
STRIPE_OUTCOMES = {
    "succeeded": Outcome.SUCCEEDED,
    "requires_action": Outcome.REQUIRES_ACTION,  # 3-D Secure: the customer must act
    "processing": Outcome.PROCESSING,  # asynchronous methods; a webhook (or a poll) tells
    "requires_capture": Outcome.PROCESSING,  # authorised, not captured (manual capture only)
    # After a confirmation attempt, these mean the attempt failed: declined during
    # authentication, never confirmed, or cancelled. The customer starts a new checkout.
    "requires_payment_method": Outcome.FAILED,
    "requires_confirmation": Outcome.FAILED,
    "canceled": Outcome.FAILED,
}
# --8<-- [end:stripe-statuses]


# --8<-- [start:stripe-errors]
@contextmanager
def stripe_errors():
    """Translate stripe-python's errors into what the task may do about them."""
    try:
        yield
    except stripe.CardError as error:  # 402: declined, the customer's answer
        raise CardDeclined(error.user_message or str(error)) from error
    except stripe.APIConnectionError as error:  # no answer: the request may have run
        raise ProviderTimeout(str(error)) from error
    except (stripe.RateLimitError, stripe.APIError) as error:  # 429, 5xx, 409 "key in use"
        # stripe-python passes no ``code`` to a 409's APIError: read it from the body.
        code = ((error.json_body or {}).get("error") or {}).get("code")
        if error.http_status == 409 and code == "idempotency_key_in_use":
            raise PaymentInProgress(str(error)) from error
        raise ProviderUnavailable(str(error)) from error
    except (
        stripe.InvalidRequestError,  # 400/404: a bad request stays bad
        stripe.AuthenticationError,  # 401: wrong or revoked API key
        stripe.PermissionError,  # 403: the key may not do this
        stripe.IdempotencyError,  # the key was used with other parameters
    ) as error:
        if isinstance(error, stripe.InvalidRequestError) and error.param == "payment_method":
            # "No such PaymentMethod": the id the customer's browser sent is not one of
            # this account's. Their input, not our bug: it fails the order like a decline.
            raise PaymentMethodRefused(f"{type(error).__name__}: {error.user_message or error}") from error
        raise PaymentRejected(f"{type(error).__name__}: {error.user_message or error}") from error
        # --8<-- [end:stripe-errors]


class StripeProvider:
    """Stripe PaymentIntents, confirmed at once, with our idempotency key.

    ``api_base`` points the real client at another address (``STRIPE_API_BASE``:
    stripe-mock, or the tests' fake Stripe); empty means api.stripe.com.
    """

    def __init__(self, api_key: str, api_base: str = "", http_client: stripe.HTTPClient | None = None):
        # No client-side retries: Celery owns the retry policy (backoff, dead letter).
        self.client = stripe.StripeClient(
            api_key,
            max_network_retries=0,
            base_addresses={"api": api_base} if api_base else None,
            http_client=http_client or stripe.RequestsClient(timeout=settings.PAYMENT_PROVIDER_TIMEOUT),
        )

    def charge(
        self,
        *,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        payment_method: str = "",
        return_url: str = "",
        metadata: dict[str, str] | None = None,
    ) -> Charge:
        params = {
            "amount": amount_cents,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "confirm": True,
            "metadata": metadata or {},
        }
        if return_url:  # 3-D Secure (and other redirects) come back to the order page
            params |= {"automatic_payment_methods": {"enabled": True}, "return_url": return_url}
        else:
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        with stripe_errors():
            intent = self.client.v1.payment_intents.create(params=params, options={"idempotency_key": idempotency_key})
        return self.from_intent(intent, idempotency_key=idempotency_key)  # Stripe's answer to *this* key

    def retrieve(self, charge_id: str) -> Charge:
        with stripe_errors():
            return self.from_intent(self.client.v1.payment_intents.retrieve(charge_id))

    def cancel(self, charge_id: str) -> Charge:
        with stripe_errors():
            intent = self.client.v1.payment_intents.cancel(charge_id, params={"cancellation_reason": "abandoned"})
        return self.from_intent(intent)

    def find(self, *, idempotency_key: str, metadata: dict[str, str]) -> Charge | None:
        """The newest PaymentIntent carrying all of ``metadata``, found with Stripe's search API.

        Every pair is a clause of the query, and each result is checked again: a
        PaymentIntent that names the order but not this site is another site's.
        Search is not available in every account region (not in India): there it
        raises, the task retries and then leaves a dead letter instead of charging.
        """
        query = " AND ".join(f"metadata['{key}']:{quoted(value)}" for key, value in sorted(metadata.items()))
        with stripe_errors():
            found = self.client.v1.payment_intents.search(params={"query": query, "limit": 10})
        charges = [self.from_intent(intent) for intent in sorted(found.data, key=lambda i: i.created, reverse=True)]
        return next((charge for charge in charges if metadata.items() <= charge.metadata.items()), None)

    @staticmethod
    def from_intent(intent: stripe.PaymentIntent, idempotency_key: str = "") -> Charge:
        """A PaymentIntent, from the API or a webhook event, in our words."""
        data = intent.to_dict()  # StripeObject is not a dict: read optional fields from a plain one
        status = data["status"]
        outcome = STRIPE_OUTCOMES.get(status, Outcome.PROCESSING)  # a status new to us: ask again later
        next_action = data.get("next_action") or {}
        action_url = (next_action.get("redirect_to_url") or {}).get("url") or ""
        reason = ""
        if outcome == Outcome.FAILED:
            reason = (data.get("last_payment_error") or {}).get("message") or {
                "canceled": f"The payment was cancelled ({data.get('cancellation_reason') or 'no reason given'}).",
                "requires_confirmation": "The payment was never confirmed.",
            }.get(status, "The payment failed.")
        return Charge(
            id=data["id"],
            amount_cents=data["amount"],
            currency=data["currency"].upper(),
            outcome=outcome,
            provider_status=status,
            action_url=action_url,
            failure_reason=reason,
            idempotency_key=idempotency_key,
            metadata={key: str(value) for key, value in (data.get("metadata") or {}).items()},
        )


def quoted(value: str) -> str:
    """A value for Stripe's search query language: in single quotes, a quote in it escaped."""
    return "'" + value.replace("'", "\\'") + "'"


# --8<-- [start:provider-name]
NOT_CONFIGURED = (
    "Payments are not configured: STRIPE_SECRET_KEY is not set and the sandbox provider is not allowed "
    "here, so checkout refuses every order. Set STRIPE_SECRET_KEY, or PAYMENTS_ALLOW_SANDBOX=true for a "
    "site whose payments are pretend: test cards, orders marked paid, no money taken."
)


def provider_name() -> str:
    """Who takes this site's payments: "stripe", "sandbox", or "" (nobody: payments are not configured).

    Stripe when STRIPE_SECRET_KEY is set. Otherwise the sandbox, but only where it is
    allowed: by default in development and tests, in production only with
    PAYMENTS_ALLOW_SANDBOX=true. A production site that merely lacks its key must not
    take test cards and mark orders paid with no money taken: it takes no orders.
    """
    if settings.STRIPE_SECRET_KEY:
        return "stripe"
    if settings.PAYMENTS_ALLOW_SANDBOX:
        return "sandbox"
    return ""


def get_provider() -> PaymentProvider:
    name = provider_name()
    if name == "stripe":
        return StripeProvider(settings.STRIPE_SECRET_KEY, api_base=settings.STRIPE_API_BASE)
    if name == "sandbox":
        return SandboxProvider()
    raise PaymentsNotConfigured(NOT_CONFIGURED)
    # --8<-- [end:provider-name]
