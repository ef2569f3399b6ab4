"""Drill: a double-clicked checkout. Eight POSTs of one form at once, then the form resubmitted.

The customer's browser sends the same checkout form several times (a double
click, a flaky connection that retries, the back button and "resubmit").
The Procfile's ``web`` process serves the POSTs on concurrent threads while the
worker pools charge; every POST must land on the same order, and the provider's
ledger must hold one charge for it. Before the submission key, each POST made an
order of its own and each order was charged.
"""

import http.client
import os
import re
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from .conftest import free_port, procfile, wait_for

pytestmark = pytest.mark.drill

CONCURRENT = 8


class Browser:
    """Cookies and forms over plain HTTP; redirects are answers, not followed."""

    def __init__(self, port: int):
        self.port, self.cookies = port, {}

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, str, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=urlencode(form) if form is not None else None, headers=headers)
            response = connection.getresponse()
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
            return response.status, response.headers.get("Location", ""), response.read().decode()
        except OSError:  # not listening yet
            return 0, "", ""
        finally:
            connection.close()

    def form(self, path: str) -> dict:
        """The hidden fields of the form on ``path`` (CSRF token, submission key)."""
        status, _, page = self.request("GET", path)
        assert status == 200, f"GET {path}: {status}"
        return dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]+)"', page))


@pytest.fixture
def web(project, pools, tmp_path):
    """The Procfile's ``web`` process (runserver, threaded), next to the pools."""
    port = free_port()
    log = tmp_path / "web.log"
    process = subprocess.Popen(
        ["/bin/sh", "-c", f"exec {procfile(project.path)['web']}"],
        cwd=project.path,
        env=project.env | {"PORT": str(port)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    browser = Browser(port)
    try:
        wait_for(lambda: browser.request("GET", "/accounts/login/")[0] == 200, 60, "the web process")
        yield browser
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_double_clicked_checkout_creates_one_order_and_charges_once(project, pools, web):
    login = web.form("/accounts/login/") | {"username": "demo", "password": "demo"}  # seed_demo_data's user
    assert web.request("POST", "/accounts/login/", login)[0] == 302
    before = set(project.driver("state")["orders"])
    form = web.form("/payments/checkout/") | {
        "amount": "42.00",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
    }
    start = threading.Barrier(CONCURRENT)

    def submit(_):
        start.wait()  # the clicks arrive together
        return web.request("POST", "/payments/checkout/", form)

    with ThreadPoolExecutor(CONCURRENT) as clicks:
        answers = list(clicks.map(submit, range(CONCURRENT)))

    assert [status for status, _, _ in answers] == [302] * CONCURRENT
    (location,) = {location for _, location, _ in answers}  # every click sees the same order
    order = int(location.rstrip("/").rsplit("/", 1)[1])
    wait_for(lambda: project.orders_in("paid", [order]), 60, "the order to be paid")
    status, again, _ = web.request("POST", "/payments/checkout/", form)  # resubmitted later
    assert (status, again) == (302, location)

    state = project.driver("state")
    assert set(state["orders"]) - before == {str(order)}  # one new order
    key = state["orders"][str(order)]["key"]
    assert state["charges_per_key"][key] == 1  # one charge in the provider's ledger
    assert state["ledger"][key] == state["orders"][str(order)]["charge_id"]
