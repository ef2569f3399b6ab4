"""The site as a person uses it: log in, find every page from the navigation, see how things end.

Headless Chromium (tests/browser.py) against a live server. The checkout test
runs on the real worker pools; the others need none (an export's state is set
in the database, as a dead worker would leave it).

Each page is also saved as a screenshot: into SITE_SCREENSHOTS (a directory;
the template's docs/img/ via benchmarks/site_screenshots.py) or a temporary one.
"""

import os
import re
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from {{ cookiecutter.project_slug }}.core import metrics
from {{ cookiecutter.project_slug }}.exports.models import ExportJob

from .browser import browser_context
from .conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]
# config/topology.py by way of metrics: importing config next to the project package
# would sort differently for different project names.
topology = metrics.topology
PASSWORD = "correct-horse-battery"


@pytest.fixture
def browser(live_server, monkeypatch):
    with browser_context(monkeypatch, viewport={"width": 1100, "height": 750}, base_url=live_server.url) as context:
        yield context


@pytest.fixture
def shoot(tmp_path):
    """``shoot(page, "orders")`` saves the page as site-orders.png."""
    directory = Path(os.environ.get("SITE_SCREENSHOTS") or tmp_path)

    def save(page, name: str) -> None:
        page.screenshot(path=str(directory / f"site-{name}.png"))

    return save


# (navigation link, the home page's link, the heading of the page they lead to)
PARTS = [
    ("Exports", "#home-exports", "Your exports"),
    ("Checkout", "#home-checkout", "Checkout"),
    ("Orders", "#home-orders", "Your orders"),
]


def nav(page, name: str):
    """The navigation bar's link called ``name``."""
    return page.locator("header nav").get_by_role("link", name=name, exact=True)


def account(username: str, **fields):
    return get_user_model().objects.create_user(username, f"{username}@example.com", PASSWORD, **fields)


def log_in(browser, username: str, password: str = PASSWORD):
    """A new tab, logged in through the login form."""
    page = browser.new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/$"))
    return page


def test_log_in_find_every_page_and_log_out(live_server, browser, shoot, transactional_db):
    account("ada")
    page = browser.new_page()
    page.goto("/")
    expect(page.locator("#login")).to_be_visible()
    forgot = page.get_by_role("link", name="Forgot your password?")
    expect(forgot).to_be_visible()
    page.click("#login")
    expect(page.locator("h1")).to_have_text("Log in")
    # The site's name, not the host Django's login view calls the site ("localhost:8000").
    expect(page).to_have_title(f"Log in · {settings.SITE_NAME}")
    expect(nav(page, settings.SITE_NAME)).to_be_visible()
    assert "Django administration" not in page.content()
    shoot(page, "login")

    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/$"))
    expect(page.locator("#signed-in")).to_have_text("Signed in as ada")
    expect(page.locator("nav")).not_to_contain_text("Operations")  # staff only
    expect(forgot).to_have_count(0)  # signed in: the password is known
    shoot(page, "home")

    # The home page and the navigation lead to each part of the site.
    for nav_link, home_link, heading in PARTS:
        page.goto("/")
        page.click(home_link)
        expect(page.locator("h1")).to_have_text(heading)
        page.goto("/")
        nav(page, nav_link).click()
        expect(page.locator("h1")).to_have_text(heading)
        expect(page.locator("#signed-in")).to_have_text("Signed in as ada")

    page.click("#logout")  # a POST form
    page.wait_for_url(re.compile(r"/$"))
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#signed-in")).to_have_count(0)


def test_checkout_shows_how_each_payment_ended(live_celery, live_server, browser, shoot):
    account("ada")
    page = log_in(browser, "ada")

    nav(page, "Checkout").click()
    # An amount in money, next to its currency: not "Amount cents: 2500".
    expect(page.get_by_label("Amount")).to_have_value("25.00")
    expect(page.get_by_label("Currency")).to_have_value("EUR")
    expect(page.locator("#checkout")).not_to_contain_text("cents")
    page.select_option("#id_payment_method", "pm_card_visa")
    shoot(page, "checkout")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/payments/orders/\d+/$"))
    expect(page.locator("#status")).to_have_text("Paid", timeout=60_000)  # the page reloads until the worker is done
    shoot(page, "order")

    page.goto("/payments/checkout/")
    page.select_option("#id_payment_method", "pm_card_chargeDeclined")
    page.click("main button[type=submit]")
    expect(page.locator("#status")).to_have_text("Failed", timeout=60_000)
    expect(page.locator("#reason")).to_have_text("Your card was declined.")

    nav(page, "Orders").click()
    rows = page.locator("#orders tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Failed Your card was declined.")  # newest first
    expect(rows.nth(1)).to_contain_text("Paid")
    expect(rows.nth(1)).to_contain_text("25.00 EUR")
    shoot(page, "orders")
    rows.nth(1).locator("a").click()
    expect(page.locator("#status")).to_have_text("Paid")


def test_an_export_whose_worker_died_shows_stalled_resuming_and_can_be_cancelled(
    live_server, browser, shoot, transactional_db
):
    ada = account("ada")
    now = timezone.now()
    done = ExportJob.objects.create(
        user=ada, status=ExportJob.Status.COMPLETED, processed_rows=5000, total_rows=5000, finished_at=now
    )
    ExportJob.objects.create(user=ada, status=ExportJob.Status.FAILED, error="OSError: [Errno 28] No space left")
    job = ExportJob.objects.create(
        user=ada,
        status=ExportJob.Status.RUNNING,
        processed_rows=2000,
        total_rows=5000,
        started_at=now - timedelta(minutes=2),
        lease_owner="runner",
        lease_expires_at=now + timedelta(minutes=5),  # a live runner
    )
    page = log_in(browser, "ada")

    nav(page, "Exports").click()
    row = page.locator(f"#export-{job.pk}")
    expect(row.locator(".status")).to_have_text("Running")
    assert row.locator("progress").evaluate("bar => bar.value") == pytest.approx(0.4)
    # A finished export's rows, on the list and on its page, counted and written alike.
    expect(page.locator(f"#export-{done.pk} .rows")).to_have_text("5,000 of 5,000 rows")
    page.locator(f"#export-{done.pk} a").first.click()
    expect(page.locator("#status")).to_have_text("Completed")
    expect(page.locator("#progress")).to_have_text("5,000 of 5,000 rows")
    nav(page, "Exports").click()

    row.locator("a").first.click()
    expect(page.locator("#progress")).to_contain_text("2,000 of 5,000 rows")
    expect(page.locator("#progress")).to_contain_text("ETA")

    # The worker is killed: it stops renewing its lease, which expires.
    ExportJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    expect(page.locator("#status")).to_have_text("Stalled — resuming")  # the polling page, without a reload
    expect(page.locator("#stalled")).to_be_visible()
    expect(page.locator("#progress")).to_have_text("2,000 of 5,000 rows · stalled — resuming")  # no growing ETA
    shoot(page, "export-stalled")

    nav(page, "Exports").click()
    expect(page.locator(f"#export-{job.pk} .status")).to_have_text("Stalled — resuming")
    shoot(page, "exports")

    page.locator(f"#export-{job.pk} .cancel-export").click()
    expect(page.locator("#messages")).to_have_text(f"Export {job.pk} cancelled.")
    expect(page.locator("#status")).to_have_text("Cancelled")
    expect(page.locator("#cancel-export")).to_have_count(0)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.CANCELLED


def test_the_password_reset_flow_wears_the_sites_look(live_server, browser, shoot, transactional_db, mailoutbox):
    account("ada")
    page = browser.new_page()
    page.goto("/accounts/login/")
    page.click("text=Forgot your password?")
    expect(page.locator("h1")).to_have_text("Reset your password")
    shoot(page, "password-reset")

    page.fill("#id_email", "ada@example.com")
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Check your email")
    shoot(page, "password-reset-done")

    # Sent after COMMIT by the task (eager here: no pools in this test), to the test outbox.
    wait_for(lambda: mailoutbox, 30, "the reset email")
    link = re.search(r"^https?://\S+/accounts/reset/\S+$", mailoutbox[0].body, re.MULTILINE).group(0)
    page.goto(urlsplit(link).path)  # SITE_URL names the production host; the path is what matters
    expect(page.locator("h1")).to_have_text("Choose a new password")
    shoot(page, "password-reset-confirm")

    page.fill("#id_new_password1", "a-new-and-longer-secret")
    page.fill("#id_new_password2", "a-new-and-longer-secret")
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Password changed")
    shoot(page, "password-reset-complete")

    for url in ("/accounts/password_reset/", "/accounts/password_reset/done/", "/accounts/reset/done/"):
        page.goto(url)
        assert "Django administration" not in page.content()
        expect(page.locator("link[href$='pico.min.css']")).to_have_count(1)
        expect(page.locator("header nav")).to_contain_text("Exports")
    assert log_in(browser, "ada", "a-new-and-longer-secret").locator("#signed-in").is_visible()


@pytest.fixture
def no_canary_samples():
    """No canary sample yet, as on a fresh start (beat sends none in these tests); removed afterwards."""
    keys = [metrics.LATENCY] + [metrics.HISTORY + queue for queue in topology.QUEUES]
    metrics.store().delete(*keys)
    yield
    metrics.store().delete(*keys)


@pytest.fixture
def canary_history(no_canary_samples):
    """An hour of canary samples per queue, one a minute up to now, a few over the SLA."""
    start = time.time() - 59 * 60
    for queue in topology.QUEUES:
        sla = topology.SLA_SECONDS[queue]
        for minute in range(60):
            factor = 1.6 if minute in (20, 21, 45) else 0.1 + 0.3 * ((minute * 7) % 11) / 11
            metrics.record_latency(queue, sla * factor, at=start + 60 * minute)


def test_the_operations_page_is_for_staff(live_server, browser, shoot, transactional_db, canary_history):
    account("ops", is_staff=True)
    account("ada")

    page = log_in(browser, "ops")
    nav(page, "Operations").click()
    expect(page.locator("h1")).to_have_text("Operations")
    expect(page.locator("article.pool")).to_have_count(len(topology.POOLS))
    expect(page.locator("svg.chart")).to_have_count(len(topology.QUEUES))
    expect(page.locator("svg.chart line.sla")).to_have_count(len(topology.QUEUES))
    expect(page.locator("svg.chart circle.breach")).to_have_count(3 * len(topology.QUEUES))
    for queue in topology.QUEUES:
        expect(page.locator(f"#queue-{queue} .depth")).to_have_text(re.compile(r"^\d+ waiting$"))  # the broker's count
    shoot(page, "operations")
    page.click("#logout")

    customer = log_in(browser, "ada")
    expect(customer.locator("nav")).not_to_contain_text("Operations")
    response = customer.goto("/operations/")
    assert response.status == 403
    expect(customer.locator("h1")).to_have_text("Not allowed")
    expect(customer.locator("#signed-in")).to_have_text("Signed in as ada")


def test_the_operations_page_just_after_start_shows_the_hour_to_come(
    live_server, browser, shoot, transactional_db, no_canary_samples
):
    """The first canary samples: each a dot at the right end of the hour, across the full width;
    a queue without one yet says so."""
    account("ops", is_staff=True)
    *sampled, waiting = topology.QUEUES
    for queue in sampled:
        metrics.record_latency(queue, topology.SLA_SECONDS[queue] / 4)

    page = log_in(browser, "ops")
    nav(page, "Operations").click()
    hour = ["60 min ago", "45 min ago", "30 min ago", "15 min ago", "now"]
    for queue in topology.QUEUES:
        chart = page.locator(f"#queue-{queue} svg.chart")
        expect(chart.locator("text.time")).to_have_text(hour)
        column = page.locator(f"#queue-{queue}").bounding_box()["width"]
        assert chart.bounding_box()["width"] > 0.95 * column, queue  # the chart is as wide as its column
    for queue in sampled:
        expect(page.locator(f"#queue-{queue} svg.chart circle.sample")).to_have_count(1)
    expect(page.locator(f"#queue-{waiting} svg.chart")).to_contain_text("No data yet")
    expect(page.locator(f"#queue-{waiting} .latency")).to_have_text("no sample")
    page.locator(f"#queue-{waiting}").scroll_into_view_if_needed()  # the screenshot: the empty chart too
    shoot(page, "operations-start")
