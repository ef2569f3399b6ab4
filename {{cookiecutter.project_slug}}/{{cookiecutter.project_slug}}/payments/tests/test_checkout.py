"""Checkout idempotency: one order per submitted form. tests/test_checkout_integration.py races it for real."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from ..models import Order, SandboxCharge
from .test_process_payment import checkout_form


@pytest.fixture
def client_of(db, client):
    client.force_login(get_user_model().objects.create_user("ada", "ada@example.com", "pw"))
    return client


def submission_key(page: str) -> str:
    return re.search(r'name="submission_key" value="([0-9a-f-]{36})"', page).group(1)


def test_each_rendered_form_carries_a_fresh_submission_key(client_of):
    first = submission_key(client_of.get(reverse("payments:checkout")).text)
    second = submission_key(client_of.get(reverse("payments:checkout")).text)
    assert first != second


# --8<-- [start:replay-unit]
def test_a_replayed_submission_creates_one_order_and_one_charge(client_of, django_capture_on_commit_callbacks):
    form = checkout_form()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        responses = [client_of.post(reverse("payments:checkout"), form) for _ in range(3)]

    order = Order.objects.get()
    assert {response.url for response in responses} == {reverse("payments:order", args=[order.pk])}
    assert len(callbacks) == 1  # only the POST that created the order dispatched a payment
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert SandboxCharge.objects.count() == 1
    # --8<-- [end:replay-unit]


def test_two_forms_are_two_orders(client_of):
    client_of.post(reverse("payments:checkout"), checkout_form())
    client_of.post(reverse("payments:checkout"), checkout_form())
    assert Order.objects.count() == 2


def test_the_same_key_of_two_users_is_two_orders(client_of, client, db):
    form = checkout_form()
    client_of.post(reverse("payments:checkout"), form)
    client.force_login(get_user_model().objects.create_user("bob", "bob@example.com", "pw"))
    client.post(reverse("payments:checkout"), form)
    assert Order.objects.count() == 2


def test_a_form_without_a_key_creates_nothing_and_comes_back_with_one(client_of):
    form = checkout_form()
    del form["submission_key"]

    response = client_of.post(reverse("payments:checkout"), form)

    assert response.status_code == 200
    assert not Order.objects.exists()
    assert submission_key(response.text)  # resubmitting this form will work


def test_a_bad_payment_method_is_a_form_error(client_of):
    response = client_of.post(reverse("payments:checkout"), checkout_form(payment_method="4242 4242 4242 4242"))
    assert response.status_code == 200
    assert not Order.objects.exists()


@pytest.mark.parametrize("payment_method", ["pm_card_visa\n", "pm_card_bogus", " pm_card_visa"])
def test_the_sandbox_takes_only_its_test_cards(client_of, payment_method):
    """Anything else would reach the provider, fail there, and leave a dead letter and an alert."""
    response = client_of.post(reverse("payments:checkout"), checkout_form(payment_method=payment_method))

    assert response.status_code == 200
    assert not Order.objects.exists()
    assert "Pick one of the sandbox&#x27;s test cards." in response.text


@pytest.mark.parametrize(
    ("payment_method", "accepted"),
    [
        ("pm_1NvQz2LkdIwHu7ixUEgbFdYF", True),  # as Stripe.js creates them
        ("pm_1NvQz2LkdIwHu7ixUEgbFdYF\n", False),  # "$" would let the newline through
        ("pm_card_visa", False),  # a test id for the API, never from the Payment Element
        ("pm_", False),
        ("pi_1NvQz2LkdIwHu7ixUEgbFdYF", False),
        ("pm_1Nv-Qz2", False),
    ],
)
def test_stripe_takes_only_a_payment_method_id(client_of, settings, payment_method, accepted):
    settings.STRIPE_SECRET_KEY, settings.STRIPE_PUBLISHABLE_KEY = "sk_test_x", "pk_test_x"

    response = client_of.post(reverse("payments:checkout"), checkout_form(payment_method=payment_method))

    assert Order.objects.exists() == accepted
    if not accepted:
        assert response.status_code == 200
        assert "The card form did not complete: enter your card details again." in response.text
        field = re.search(r'<input type="hidden" name="payment_method"[^>]*>', response.text).group(0)
        assert "value=" not in field  # empty: the script creates a new one instead of resubmitting it


@pytest.mark.parametrize("method", ["get", "post"])
def test_without_a_payment_provider_checkout_says_so_and_creates_nothing(client_of, settings, method):
    """Production without a Stripe key, the sandbox not allowed: no pretend payments."""
    settings.STRIPE_SECRET_KEY, settings.PAYMENTS_ALLOW_SANDBOX = "", False

    response = getattr(client_of, method)(reverse("payments:checkout"), checkout_form())

    assert response.status_code == 503
    assert "Payments are not available on this site yet" in response.text
    assert 'id="checkout"' not in response.text
    assert not Order.objects.exists()


def test_the_amount_is_typed_with_its_currency_and_kept_in_cents(client_of):
    page = client_of.get(reverse("payments:checkout")).text
    assert re.search(r'<label for="id_amount">Amount</label>\s*<fieldset role="group" class="amount">', page)
    assert 'name="amount" value="25.00"' in page
    assert 'aria-label="Currency"' in page
    assert "cents" not in page.lower()  # no raw cents for people to type

    client_of.post(reverse("payments:checkout"), checkout_form(amount="12.34", currency="GBP"))
    assert Order.objects.values_list("amount_cents", "currency").get() == (1234, "GBP")


@pytest.mark.parametrize("amount", ["12.345", "0.10", "abc", ""])
def test_an_amount_that_is_not_money_is_a_form_error(client_of, amount):
    response = client_of.post(reverse("payments:checkout"), checkout_form(amount=amount))
    assert response.status_code == 200
    assert not Order.objects.exists()
