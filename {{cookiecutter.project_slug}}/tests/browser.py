"""Headless Chromium for the browser tests: the system's (CHROMIUM_PATH, or chromium on PATH), driven by Playwright.

Without Chromium the browser tests are skipped on a laptop and fail in CI (``CI``
set), where a skip would hide missing infrastructure.
"""

import os
import shutil
from contextlib import contextmanager

import pytest


def chromium() -> str:
    path = os.environ.get("CHROMIUM_PATH") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if not path:
        message = "no Chromium: install it (apt install chromium) or set CHROMIUM_PATH"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@contextmanager
def browser_context(monkeypatch, **options):
    """A fresh browser context (cookies of its own); ``options`` go to ``Browser.new_context``."""
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes between browser steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            context = browser.new_context(**options)
            # What the Content-Security-Policy blocks (an inline script without the
            # page's nonce, a style, a frame) is a console error: a page that needs it
            # is broken for every user, so the test fails.
            blocked = []
            context.on(
                "console",
                lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None,
            )
            yield context
            assert not blocked, f"blocked by the Content-Security-Policy: {blocked}"
        finally:
            browser.close()
