"""A double-clicked checkout, for real: concurrent HTTP POSTs of one form at a live server, real pools.

Eight threads send the same submitted form at the same moment (a double click,
a browser retry, a nervous customer), and a ninth sends it again once the
payment is done (the back button and "resubmit"). Each request runs in its own
server thread with its own database connection, so the INSERTs really race;
the worker pools really charge. One order, one charge.
"""

import http.client
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge

from .conftest import wait_for

pytestmark = pytest.mark.integration
CONCURRENT = 8


class Browser:
    """Just enough of a browser: cookies, and no redirect following (the Location is the answer)."""

    def __init__(self, base_url: str, cookies: dict[str, str]):
        parts = urlsplit(base_url)
        self.host, self.port, self.cookies = parts.hostname, parts.port, dict(cookies)

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, dict, str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
            return response.status, dict(response.headers), response.read().decode()
        finally:
            connection.close()

    def checkout_form(self) -> dict:
        """GET the checkout page and fill in its form, hidden fields included."""
        status, _, page = self.request("GET", "/payments/checkout/")
        assert status == 200
        hidden = dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]+)"', page))
        assert {"csrfmiddlewaretoken", "submission_key"} <= set(hidden)
        return hidden | {"amount": "25.00", "currency": "EUR", "payment_method": "pm_card_visa"}


def login(live_server, username: str) -> Browser:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw")
    client = Client()
    client.force_login(user)
    return Browser(live_server.url, {"sessionid": client.cookies["sessionid"].value})


# --8<-- [start:double-click]
def test_concurrent_and_replayed_posts_of_one_form_create_one_order_and_one_charge(live_celery, live_server):
    browser = login(live_server, "ada")
    form = browser.checkout_form()
    start = threading.Barrier(CONCURRENT)

    def submit(_):
        start.wait()  # all at once
        return browser.request("POST", "/payments/checkout/", form)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(submit, range(CONCURRENT)))

    order = Order.objects.get()
    assert [status for status, _, _ in answers] == [302] * CONCURRENT
    assert {headers["Location"] for _, headers, _ in answers} == {f"/payments/orders/{order.pk}/"}
    wait_for(lambda: Order.objects.filter(pk=order.pk, status=Order.Status.PAID).exists(), message="the payment")

    status, headers, _ = browser.request("POST", "/payments/checkout/", form)  # replayed later

    assert (status, headers["Location"]) == (302, f"/payments/orders/{order.pk}/")
    assert Order.objects.count() == 1
    assert SandboxCharge.objects.count() == 1
    assert SandboxCharge.objects.get().charge_id == Order.objects.get().charge_id
    # --8<-- [end:double-click]


def test_two_forms_of_one_customer_are_two_orders(live_celery, live_server):
    browser = login(live_server, "bob")

    for _ in range(2):
        status, _, _ = browser.request("POST", "/payments/checkout/", browser.checkout_form())
        assert status == 302

    wait_for(lambda: Order.objects.filter(status=Order.Status.PAID).count() == 2, message="two payments")
    assert SandboxCharge.objects.count() == 2
