import logging

from celery import shared_task
from django.db import transaction

from .models import Order
from .providers import get_provider

logger = logging.getLogger(__name__)


@shared_task
def process_payment(order_id: int) -> str:
    """Charge order ``order_id`` once, however often the message is delivered.

    Routed to "high". Safe to repeat: the row lock serialises concurrent
    deliveries, the status guard skips paid orders, and the order's idempotency
    key makes the provider return the earlier charge if we crashed after charging
    and before committing.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None:
            logger.warning("payment: order %s does not exist, nothing charged", order_id)
            return "missing"
        if order.status == Order.Status.PAID:
            return "already-paid"
        charge = get_provider().charge(
            amount_cents=order.amount_cents,
            currency=order.currency,
            idempotency_key=str(order.idempotency_key),
        )
        order.status = Order.Status.PAID
        order.charge_id = charge.id
        order.save(update_fields=["status", "charge_id", "updated_at"])
    logger.info("payment: order %s paid with %s", order_id, charge.id)
    return "paid"
