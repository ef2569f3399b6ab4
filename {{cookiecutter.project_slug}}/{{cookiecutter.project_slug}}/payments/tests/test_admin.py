"""The Order admin: what may still change once a payment was sent."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from ..models import Order
from ..tasks import process_payment


@pytest.fixture
def order(db):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    return Order.objects.create(user=user, amount_cents=4200, currency="EUR", payment_method="pm_card_visa")


def editable(admin_client, order) -> set[str]:
    page = admin_client.get(reverse("admin:payments_order_change", args=[order.pk])).text
    return {field for field in ("amount_cents", "currency", "payment_method") if f'name="{field}"' in page}


def test_an_order_not_sent_yet_can_still_be_corrected(admin_client, order):
    assert editable(admin_client, order) == {"amount_cents", "currency", "payment_method"}


@pytest.mark.parametrize(
    "sent",
    [
        lambda order: process_payment(order.pk),  # paid
        # A request without an answer (a timeout): the provider may hold a payment for it.
        lambda order: Order.objects.filter(pk=order.pk).update(status=Order.Status.PROCESSING, payment_attempts=1),
    ],
    ids=["paid", "sent-no-answer"],
)
def test_once_a_payment_was_sent_its_amount_currency_and_method_are_read_only(admin_client, order, sent):
    """Changed afterwards, the order would no longer match what the provider charged."""
    sent(order)
    order.refresh_from_db()

    assert editable(admin_client, order) == set()
    page = admin_client.get(reverse("admin:payments_order_change", args=[order.pk])).text
    assert "4200" in page  # still shown, as text
