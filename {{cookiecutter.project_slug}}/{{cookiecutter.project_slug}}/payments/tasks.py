import logging
import uuid
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from .. import outbox
from ..core.models import FailedTask
from ..core.task_base import queue_of
from ..outbox.relay import unsent_args
from .models import Order
from .providers import (
    NOT_CONFIGURED,
    CardDeclined,
    Charge,
    Outcome,
    PaymentInProgress,
    PaymentMethodRefused,
    PaymentProvider,
    PaymentRejected,
    ProviderTimeout,
    ProviderUnavailable,
    get_provider,
    provider_name,
)

logger = logging.getLogger(__name__)


# --8<-- [start:process-payment]
@shared_task(bind=True, autoretry_for=(ProviderTimeout, ProviderUnavailable))
def process_payment(self, order_id: int) -> str:
    """Charge order ``order_id`` exactly once, however often the message arrives.

    Routed to "high". Three short steps instead of one long transaction:

    1. Lock the order row, return if it is already paid, mark it PROCESSING and
       commit. Concurrent deliveries queue on the lock only for milliseconds.
    2. Call the provider with the order's idempotency key, outside any
       transaction and without the lock. A slow provider must not hold a row lock
       and a database connection for seconds while every other delivery (and the
       admin, and webhooks) waits behind it. What makes a repeat safe is the key:
       the provider returns the earlier charge instead of charging again.
    3. Lock the row again and record where the payment stands: PAID only if the
       provider says it succeeded; REQUIRES_ACTION (3-D Secure) or PROCESSING
       until a webhook or reconciliation learns the end (``sync_payment``).

    The classic version (lock, charge, save in one transaction) charges twice
    when the worker dies after the provider charged and before the COMMIT: the
    retry finds the order unpaid and charges again. Here the retry sends the same
    key and gets the same charge back.

    Timeouts, rate limits and outages are retried with exponential backoff and
    jitter (the policy of core/task_base.py); after the last retry a FailedTask
    row is written and the order stays PROCESSING for reconciliation to re-send.
    A decline fails the order with its reason; so does a payment method the
    provider does not know (the customer's input: no dead letter). A request the provider refuses
    (invalid, unauthorised: a bug or a configuration error) fails the order *and*
    the task, once: one dead letter, and reconciliation leaves FAILED orders alone.
    A missing order is logged and the task ends without retrying. With no provider
    at all (production without a Stripe key, the sandbox not allowed) the task fails
    before it touches the order (``PaymentsNotConfigured``): one dead letter, to
    replay once payments are configured. Nothing is charged, for real or pretend.

    Sent again after the provider may have forgotten the key (a dead letter
    replayed days later), it first asks the provider for the order's earlier
    payment (``earlier_payment``) and records that one instead of charging again.
    A payment that is not the order's (``mismatch``) fails the order and the task.
    """
    # --8<-- [start:process-payment-steps]
    provider = get_provider()  # none configured: PaymentsNotConfigured, the order untouched
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None:
            logger.warning("payment: order %s does not exist, nothing charged", order_id)
            return "missing"
        if order.status == Order.Status.PAID:
            return "already-paid"
        if order.status not in (Order.Status.PENDING, Order.Status.PROCESSING):
            logger.info("payment: order %s is %s, not charging", order_id, order.status)
            return f"skipped-{order.status}"
        order.move_to(Order.Status.PROCESSING)
        order.payment_attempts += 1
        order.save(update_fields=["status", "payment_attempts", "updated_at"])

    if (earlier := earlier_payment(provider, order)) is not None:
        return record_outcome(order_id, earlier)
    try:
        charge = provider.charge(
            amount_cents=order.amount_cents,
            currency=order.currency,
            idempotency_key=str(order.idempotency_key),
            payment_method=order.payment_method,
            # Where the customer comes back after 3-D Secure. Part of the request,
            # so it must not change between retries (the key's parameters must match).
            return_url=settings.SITE_URL + reverse("payments:order", args=[order.pk]),
            metadata=payment_metadata(order),  # webhooks and lookups find the order by it
        )
        # --8<-- [end:process-payment-steps]
    except CardDeclined as declined:
        fail_order(order_id, str(declined))
        logger.info("payment: order %s declined: %s", order_id, declined)
        return "declined"
    except PaymentMethodRefused as refused:
        # The customer's input, refused by the only one who can tell (the form checked
        # its shape): final, like a decline. Not a dead letter: nobody could have done
        # better, and anyone can send a made-up "pm_..." to the checkout.
        fail_order(order_id, "This payment method could not be used. Please pay with another card.")
        logger.warning("payment: order %s: the provider refused its payment method: %s", order_id, refused)
        return "payment-method-refused"
    except PaymentInProgress:
        # A duplicate delivery while the first is still at the provider: the first
        # records the outcome (if its worker dies, its message comes back, and
        # reconciliation covers what stays PROCESSING). Retrying would only collide.
        logger.info("payment: order %s is being charged by another delivery right now", order_id)
        return "in-progress-elsewhere"
    except PaymentRejected:
        fail_order(order_id, "The payment could not be processed. We have been notified.")
        logger.error("payment: order %s refused by the provider; failed for good", order_id)
        raise  # not in autoretry_for: the task fails now, and BaseTask writes one dead letter

    return record_outcome(order_id, charge)
    # --8<-- [end:process-payment]


def payment_metadata(order: Order) -> dict[str, str]:
    """Sent with every payment: the order, and this site (PAYMENTS_SITE_ID).

    One Stripe account may serve several sites (a second shop, staging, each
    developer's ``stripe listen``), and their order ids overlap ours: the site is
    what tells our order 42's payment from theirs.
    """
    return {"order_id": str(order.pk), "site": settings.PAYMENTS_SITE_ID}


# --8<-- [start:earlier-payment]
def key_may_be_forgotten(order: Order) -> bool:
    """Did an earlier attempt send the key longer ago than the provider remembers it?

    ``payment_attempts`` counts this attempt too; the order's creation is the
    earliest the key can have been sent, so this errs on the side of asking.
    """
    window = timedelta(hours=settings.PAYMENT_IDEMPOTENCY_WINDOW_HOURS)
    return order.payment_attempts > 1 and order.created_at < timezone.now() - window


def earlier_payment(provider: PaymentProvider, order: Order) -> Charge | None:
    """The payment an attempt past the idempotency window already made, if any.

    Stripe forgets an idempotency key after 24 hours: the same key sent later is a
    new request and charges again. So a payment sent again that late (a dead
    letter replayed days after, an operator's retry) asks the provider first, by
    the order id and this site in the payment's metadata. Found: that is the
    payment (``record_outcome`` still checks it), nothing is charged. Not found: no
    earlier attempt of ours reached the provider, charging is safe.
    A provider that cannot look it up raises, and the task retries, then leaves a
    dead letter: it never charges blind.
    """
    if not key_may_be_forgotten(order):
        return None  # the key still protects the charge
    earlier = provider.find(idempotency_key=str(order.idempotency_key), metadata=payment_metadata(order))
    if earlier is not None:
        logger.warning("payment: order %s past the idempotency window: found %s, not charging", order.pk, earlier.id)
    return earlier
    # --8<-- [end:earlier-payment]


def fail_order(order_id: int, reason: str) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status in (Order.Status.PROCESSING, Order.Status.REQUIRES_ACTION):
            order.move_to(Order.Status.FAILED)
            order.failure_reason = reason[:255]
            order.save(update_fields=["status", "failure_reason", "next_action_url", "updated_at"])


class PaymentMismatch(Exception):
    """A payment that must not settle the order it was presented for: not ours, or
    not for the order's amount and currency. A person must look: it pays nothing."""


# --8<-- [start:payment-mismatch]
def mismatch(order: Order, charge: Charge) -> str:
    """Why ``charge`` may not settle ``order``; empty if it may.

    A payment settles an order only if it is ours, by one of

    * the order's idempotency key: the provider answered a request we sent;
    * the payment id the order holds (it got there through this check);
    * metadata naming this site and this order (``payment_metadata``), all that a
      webhook or a lookup (``earlier_payment``) has to go by;

    and only if it is for the order's amount in the order's currency. "order_id 42"
    in a PaymentIntent's metadata alone proves nothing: another site on the same
    Stripe account has an order 42 too, and its 0.50 USD must not pay our 1,000 EUR.
    """
    ours = (
        charge.idempotency_key == str(order.idempotency_key)
        or (order.charge_id != "" and charge.id == order.charge_id)
        or payment_metadata(order).items() <= charge.metadata.items()
    )
    if not ours:
        return f"payment {charge.id} is not this site's payment of the order (its metadata: {charge.metadata})"
    if (charge.amount_cents, charge.currency.upper()) != (order.amount_cents, order.currency.upper()):
        paid, owed = f"{charge.amount:.2f} {charge.currency}", f"{order.amount:.2f} {order.currency}"
        return f"payment {charge.id} is {paid}, the order {owed}"
    return ""
    # --8<-- [end:payment-mismatch]


# --8<-- [start:record-outcome]
OUTCOME_STATUS = {
    Outcome.SUCCEEDED: Order.Status.PAID,
    Outcome.REQUIRES_ACTION: Order.Status.REQUIRES_ACTION,
    Outcome.PROCESSING: Order.Status.PROCESSING,
    Outcome.FAILED: Order.Status.FAILED,
}


def record_outcome(order_id: int, charge: Charge) -> str:
    """Move the order to where the provider says its payment stands; a no-op if it already is.

    Every answer goes through here: the charge itself, a webhook, a poll. Answers
    arrive late, twice and out of order (a replayed webhook, a slow retry that
    returns the provider's saved first answer), so a settled order never moves
    back, and an answer that changes nothing writes nothing (which also keeps
    ``updated_at``, the clock of the authentication timeout, running).

    A payment that is not this order's (``mismatch``) settles nothing: the order
    fails (its page says so, and reconciliation stops asking about it) and so does
    the task, with ``PaymentMismatch``: one dead letter for a person to look at.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        status = OUTCOME_STATUS[charge.outcome]
        if order.status in (Order.Status.PAID, Order.Status.REFUNDED):
            return "already-paid"
        if order.status == Order.Status.FAILED:
            if status == Order.Status.PAID:  # money taken after we gave up: a person must decide
                logger.error("payment: order %s is FAILED but %s succeeded: refund or re-open", order_id, charge.id)
            return "already-failed"
        if problem := mismatch(order, charge):
            order.move_to(Order.Status.FAILED)
            order.failure_reason = "The payment could not be verified. We have been notified."
            order.save(update_fields=["status", "failure_reason", "next_action_url", "updated_at"])
        else:
            unchanged = (order.status, order.charge_id, order.provider_status) == (
                status,
                charge.id,
                charge.provider_status,
            )
            if unchanged:
                return f"unchanged-{status}"
            order.move_to(status)
            order.charge_id, order.provider_status = charge.id, charge.provider_status
            if status == Order.Status.REQUIRES_ACTION:
                order.next_action_url = charge.action_url
            if status == Order.Status.FAILED:
                order.failure_reason = charge.failure_reason[:255]
            order.save()
    if problem:  # raised after the COMMIT: the order stays FAILED
        logger.error("payment: order %s: %s; not accepted, order failed", order_id, problem)
        raise PaymentMismatch(f"order {order_id}: {problem}; not accepted, the order failed")
    logger.info("payment: order %s is %s (provider: %s %s)", order_id, status, charge.id, charge.provider_status)
    return {Order.Status.REQUIRES_ACTION: "requires-action"}.get(status, str(status))
    # --8<-- [end:record-outcome]


# --8<-- [start:sync-payment]
@shared_task(bind=True, autoretry_for=(ProviderTimeout, ProviderUnavailable))
def sync_payment(self, order_id: int) -> str:
    """Ask the provider where order ``order_id``'s payment stands, and record it.

    Routed to "high". Sent by the Stripe webhook (the event only says "look
    again": the answer comes from the API, so a forged, stale or replayed event
    cannot mark anything paid) and by reconciliation, for payments the provider
    holds undecided: waiting for 3-D Secure, or processing. A customer who has not
    authenticated within ``PAYMENT_ACTION_TIMEOUT_MINUTES`` has given up: the
    payment is cancelled and the order fails.
    """
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        logger.warning("payment sync: order %s does not exist", order_id)
        return "missing"
    if order.status not in (Order.Status.PROCESSING, Order.Status.REQUIRES_ACTION):
        return f"skipped-{order.status}"
    if not order.charge_id:
        return "not-sent-yet"  # the provider has not answered process_payment yet: its job

    provider = get_provider()
    charge = provider.retrieve(order.charge_id)
    given_up = timezone.now() - timedelta(minutes=settings.PAYMENT_ACTION_TIMEOUT_MINUTES)
    if charge.outcome == Outcome.REQUIRES_ACTION and order.updated_at < given_up:
        logger.info("payment sync: order %s not authenticated in time, cancelling %s", order_id, charge.id)
        try:
            charge = provider.cancel(order.charge_id)
        except PaymentRejected:  # no longer cancellable: the customer finished meanwhile
            charge = provider.retrieve(order.charge_id)
    return record_outcome(order_id, charge)
    # --8<-- [end:sync-payment]


# --8<-- [start:reconcile]
@shared_task
def reconcile_stuck_payments(dry_run: bool = False) -> list[int]:
    """Settle payments that nobody is settling (beat, every 5 minutes); returns the orders acted on.

    Every state an order can be stuck in, and what settles it:

    * PROCESSING, no provider id: our task died, or its last retry failed. Send
      it again: the idempotency key makes the provider return the earlier charge
      if there was one. Only while the provider still remembers the key (Stripe:
      24 hours), and at most PAYMENT_RECONCILE_MAX_ATTEMPTS times: a provider
      down for hours would otherwise earn a dead letter every cycle. Then
      reconciliation gives up on the order, once: one dead letter, one log line.
    * PROCESSING with a provider id, REQUIRES_ACTION: the provider holds the
      payment undecided and a webhook should have told us the end. Ask the
      provider (``sync_payment``), which also cancels abandoned authentications.
    * FAILED (a decline, or a request the provider refused), PAID, REFUNDED:
      settled. Never sent again.
    * PENDING: created, but its message never reached a worker. The outbox
      normally covers that (its row waits for the broker and the relay publishes
      it), so orders whose message still waits there are left to the relay. What
      remains (an outbox row deleted by hand, a message lost inside the broker) is
      sent again here, within the same bound.

    Everything is sent through the outbox too: a broker outage loses nothing here
    either. Sending a payment twice is safe: the state guard and the idempotency
    key make the provider return the earlier charge if there was one.

    With no provider configured nothing is sent: every task would fail, a dead
    letter each, every cycle. Once payments are configured the next run catches up.
    """
    if not provider_name():
        logger.warning("payment reconciliation: nothing sent. %s", NOT_CONFIGURED)
        return []
    # --8<-- [start:reconcile-body]
    now = timezone.now()
    stuck = Order.objects.filter(updated_at__lt=now - timedelta(minutes=settings.PAYMENT_STUCK_AFTER_MINUTES))
    # Orders reconciliation gave up on belong to an operator now: their dead letter says why.
    ours = stuck.filter(reconcile_gave_up_at__isnull=True)
    unsent = ours.filter(status=Order.Status.PROCESSING, charge_id="")
    remembered = now - timedelta(hours=settings.PAYMENT_IDEMPOTENCY_WINDOW_HOURS)
    resend = list(unsent.filter(created_at__gte=remembered).values_list("pk", flat=True))
    forgotten = list(unsent.filter(created_at__lt=remembered).values_list("pk", flat=True))
    held = Q(status=Order.Status.REQUIRES_ACTION) | Q(status=Order.Status.PROCESSING, charge_id__gt="")
    poll = list(stuck.filter(held).values_list("pk", flat=True))
    waiting_in_outbox = unsent_args(process_payment)
    pending = list(ours.filter(status=Order.Status.PENDING).order_by("pk").values_list("pk", flat=True))
    resend = [pk for pk in pending + resend if pk not in waiting_in_outbox]
    limit = settings.PAYMENT_RECONCILE_MAX_ATTEMPTS
    exhausted = set(Order.objects.filter(pk__in=resend, reconcile_attempts__gte=limit).values_list("pk", flat=True))
    resend = [pk for pk in resend if pk not in exhausted]

    if not dry_run:
        for pk in forgotten:
            give_up(pk, "PROCESSING past the idempotency window: the provider may have forgotten its key")
        for pk in sorted(exhausted):
            give_up(pk, f"still not charged after {limit} re-sends by reconciliation")
        for pk in resend:
            logger.warning("payment reconciliation: order %s stuck, re-dispatching", pk)
            with transaction.atomic():
                # update(), not save(): updated_at is the clock of "stuck" and must not restart.
                Order.objects.filter(pk=pk).update(reconcile_attempts=F("reconcile_attempts") + 1)
                outbox.send(process_payment, pk)
        for pk in poll:
            logger.info("payment reconciliation: order %s undecided at the provider, asking it", pk)
            with transaction.atomic():
                outbox.send(sync_payment, pk)
    return sorted(resend + poll)
    # --8<-- [end:reconcile-body]
    # --8<-- [end:reconcile]


class ReconciliationGaveUp(Exception):
    """Reconciliation stopped sending a payment again: an operator decides what happens to it."""


# --8<-- [start:give-up]
def give_up(order_id: int, reason: str) -> None:
    """Leave order ``order_id`` to an operator: one dead letter and one log line, however often we run.

    The dead letter is a ``process_payment`` of the order, so replaying it (once
    the provider is back, the configuration fixed) is the operator's way to try
    again; past the idempotency window the task asks the provider for an earlier
    payment before it charges (``earlier_payment``).
    """
    with transaction.atomic():
        # Marked in the same transaction as the dead letter: a concurrent run finds it marked.
        ours = Order.objects.filter(pk=order_id, reconcile_gave_up_at=None)
        if not ours.update(reconcile_gave_up_at=timezone.now()):
            return
        FailedTask.objects.create(
            task_name=process_payment.name,
            task_id=f"reconciliation-{uuid.uuid4()}",
            args=[order_id],
            queue=queue_of(process_payment.request, process_payment),  # where a replay goes: "high"
            exception_type=f"{__name__}.{ReconciliationGaveUp.__qualname__}",
            exception_message=f"order {order_id}: {reason}. Replay to try again.",
        )
    logger.error("payment reconciliation: order %s %s; gave up, left to an operator (dead letter)", order_id, reason)
    # --8<-- [end:give-up]


def refuse_payment(order_id: int, charge_id: str, problem: str) -> None:
    """A payment that names order ``order_id`` but is not its own: one dead letter per payment, one log line.

    For the webhook, which has no task to fail: the order is left as it is (its own
    payment may still come). Replaying the dead letter only asks the provider about
    the payment the order holds (``sync_payment``).
    """
    _, created = FailedTask.objects.get_or_create(
        task_id=f"payment-mismatch-{charge_id}",  # every event about that payment: one row
        defaults={
            "task_name": sync_payment.name,
            "args": [order_id],
            "queue": queue_of(sync_payment.request, sync_payment),
            "exception_type": f"{__name__}.{PaymentMismatch.__qualname__}",
            "exception_message": f"order {order_id}: {problem}; not accepted, the order is unchanged",
        },
    )
    if created:
        logger.error("payment: order %s: %s; not accepted (dead letter)", order_id, problem)
