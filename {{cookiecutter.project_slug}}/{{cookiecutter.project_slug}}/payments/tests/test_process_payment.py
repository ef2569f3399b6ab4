from django.contrib.auth import get_user_model

from ..models import Order, SandboxCharge
from ..tasks import process_payment


def make_order():
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    return Order.objects.create(user=user, amount_cents=4200)


def test_pays_the_order_once(db):
    order = make_order()

    assert process_payment(order.pk) == "paid"
    assert process_payment(order.pk) == "already-paid"

    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    charge = SandboxCharge.objects.get()
    assert order.charge_id == charge.charge_id
    assert charge.amount_cents == 4200


def test_provider_returns_the_earlier_charge_for_a_repeated_key(db):
    order = make_order()
    process_payment(order.pk)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PENDING)  # as if our commit had been lost

    process_payment(order.pk)

    assert SandboxCharge.objects.count() == 1


def test_missing_order_finishes_without_charging(db):
    assert process_payment(424242) == "missing"
    assert SandboxCharge.objects.count() == 0
