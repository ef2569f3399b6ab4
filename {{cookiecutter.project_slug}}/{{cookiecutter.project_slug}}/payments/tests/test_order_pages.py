"""The customer's orders page: each order's amount and how its payment ended."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from ..models import Order

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def test_the_orders_page_shows_each_outcome(user, client):
    paid = Order.objects.create(user=user, amount_cents=2500, status=Order.Status.PAID)
    declined = Order.objects.create(
        user=user, amount_cents=990, status=Order.Status.FAILED, failure_reason="Your card was declined."
    )
    retrying = Order.objects.create(user=user, amount_cents=100, status=Order.Status.PROCESSING, payment_attempts=2)
    action = Order.objects.create(
        user=user,
        amount_cents=100,
        status=Order.Status.REQUIRES_ACTION,
        next_action_url="https://bank.example/3ds",
    )
    queued = Order.objects.create(user=user, amount_cents=100)
    client.force_login(user)

    page = client.get(reverse("payments:orders")).content.decode()

    def row(order):
        return page.split(f'id="order-{order.pk}"', 1)[1].split("</tr>", 1)[0]

    assert "25.00 EUR" in row(paid)
    assert "Paid" in row(paid)
    assert "9.90 EUR" in row(declined)
    assert "Failed" in row(declined)
    assert "Your card was declined." in row(declined)
    assert "Retrying" in row(retrying)
    assert "attempt 2" in row(retrying)
    assert "https://bank.example/3ds" in row(action)
    assert "Queued" in row(queued)
    for order in (paid, declined, retrying, action, queued):
        assert reverse("payments:order", args=[order.pk]) in row(order)


def test_the_orders_page_lists_only_the_customers_own_orders(user, client):
    other = get_user_model().objects.create_user("eve", "eve@example.com", "pw")
    mine = Order.objects.create(user=user, amount_cents=100)
    theirs = Order.objects.create(user=other, amount_cents=100)
    client.force_login(user)

    page = client.get(reverse("payments:orders")).content.decode()

    assert f"Order {mine.pk}<" in page
    assert f"Order {theirs.pk}<" not in page


def test_the_orders_page_needs_a_login(client):
    assert client.get(reverse("payments:orders")).url.startswith(reverse("login"))


def test_an_order_being_retried_says_so(user, client):
    order = Order.objects.create(user=user, amount_cents=100, status=Order.Status.PROCESSING, payment_attempts=3)
    client.force_login(user)
    page = client.get(reverse("payments:order", args=[order.pk])).content.decode()
    assert "Attempt 3" in page
    assert '<meta http-equiv="refresh"' in page
