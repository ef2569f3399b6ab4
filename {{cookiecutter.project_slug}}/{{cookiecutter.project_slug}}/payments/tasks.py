import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import outbox
from ..outbox.relay import unsent_args
from .models import Order
from .providers import CardDeclined, ProviderTimeout, ProviderUnavailable, get_provider

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
    3. Lock the row again and record the outcome.

    The classic version (lock, charge, save in one transaction) charges twice
    when the worker dies after the provider charged and before the COMMIT: the
    retry finds the order unpaid and charges again. Here the retry sends the same
    key and gets the same charge back.

    Timeouts and outages are retried with exponential backoff and jitter (the
    policy of core/task_base.py); after the last retry a FailedTask row is written
    and the order stays PROCESSING for an operator (or reconciliation) to settle.
    A missing order is logged and the task ends without retrying.
    """
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

    try:
        charge = get_provider().charge(
            amount_cents=order.amount_cents,
            currency=order.currency,
            idempotency_key=str(order.idempotency_key),
            payment_method=order.payment_method,
        )
    except CardDeclined as declined:
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            if order.status == Order.Status.PROCESSING:
                order.move_to(Order.Status.FAILED)
                order.failure_reason = str(declined)[:255]
                order.save(update_fields=["status", "failure_reason", "updated_at"])
        logger.info("payment: order %s declined: %s", order_id, declined)
        return "declined"

    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status == Order.Status.PAID:  # a concurrent delivery recorded it first
            return "already-paid"
        order.move_to(Order.Status.PAID)
        order.charge_id = charge.id
        order.save(update_fields=["status", "charge_id", "paid_at", "updated_at"])
    logger.info("payment: order %s paid with %s", order_id, charge.id)
    return "paid"
    # --8<-- [end:process-payment]


# --8<-- [start:reconcile]
@shared_task
def reconcile_stuck_payments(dry_run: bool = False) -> list[int]:
    """Re-dispatch payments stuck in PROCESSING or PENDING (beat, every 5 minutes).

    An order stays PROCESSING when its worker died and the message is waiting out
    the visibility timeout, or when the last retry failed. An order stays PENDING
    when its message never reached a worker. The outbox normally covers that (its
    row waits for the broker, and the relay publishes it); orders whose message is
    still waiting there are left to the relay, so nothing is sent twice by us.
    What remains (a row deleted by hand, a message lost inside the broker) is sent
    again here. Sending a payment twice is safe anyway: the state guard and the
    idempotency key make the provider return the earlier charge if there was one.
    """
    cutoff = timezone.now() - timedelta(minutes=settings.PAYMENT_STUCK_AFTER_MINUTES)
    candidates = Order.objects.filter(
        status__in=[Order.Status.PENDING, Order.Status.PROCESSING], updated_at__lt=cutoff
    ).order_by("pk")
    waiting_in_outbox = unsent_args(process_payment)
    stuck = [pk for pk in candidates.values_list("pk", flat=True) if pk not in waiting_in_outbox]
    for pk in [] if dry_run else stuck:
        logger.warning("payment reconciliation: order %s stuck, re-dispatching", pk)
        with transaction.atomic():  # through the outbox: a broker outage loses nothing here either
            outbox.send(process_payment, pk)
    return stuck
    # --8<-- [end:reconcile]
