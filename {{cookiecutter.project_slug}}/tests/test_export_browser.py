"""A person's view of an export: start it, watch the bar move, download the file.

Headless Chromium (the system's: CHROMIUM_PATH, or chromium on PATH) driven by
Playwright against a live server, with the real export pool doing the work.
"""

import re

import pytest
from django.core.management import call_command
from django.test import Client

from .browser import browser_context

pytestmark = [pytest.mark.integration, pytest.mark.browser]
ROWS = 5000  # 10 throttled batches: a couple of seconds of visible progress


@pytest.fixture
def browser_page(live_server, monkeypatch):
    with browser_context(monkeypatch, accept_downloads=True) as context:
        yield context


def test_progress_bar_moves_and_the_download_arrives(live_celery, live_server, browser_page, tmp_path):
    call_command("seed_demo_data", transactions=ROWS, orders=0)
    client = Client()
    client.login(username="demo", password="demo")  # the account seed_demo_data creates
    browser_page.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    page = browser_page.new_page()

    page.goto(f"{live_server.url}/exports/")
    page.click("#start-export")
    page.wait_for_url(re.compile(r"/exports/\d+/$"))

    # Part-way: rows done of total, a rate and an ETA, without reloading the page.
    page.wait_for_function(
        """() => { const m = document.getElementById('progress').textContent.match(/^([\\d,]+) of 5,000 rows/);
                   return m && m[1] !== '0' && m[1] !== '5,000'; }"""
    )
    assert re.search(r"rows/s · ETA \d+ s", page.text_content("#progress"))
    partial = page.eval_on_selector("#bar", "el => el.value")
    assert 0 < partial < 100

    page.wait_for_selector("#download:not([hidden])", timeout=60_000)
    assert page.text_content("#progress").startswith("5,000 of 5,000 rows")
    page.screenshot(path=str(tmp_path / "export-done.png"))
    with page.expect_download() as download_info:
        page.click("#download-link")
    path = download_info.value.path()
    with open(path, "rb") as handle:
        lines = handle.read().splitlines()
    assert lines[0] == b"id,created_at,amount,currency,description"
    assert len(lines) == ROWS + 1
