"""What the site tells browsers, and what it shows when it breaks.

* Every page sends a Content-Security-Policy, and every inline script carries the
  response's nonce: a script injected into a page has none and does not run (the
  browser tests run the real pages under this policy and fail on any violation).
* Django's DEBUG error page shows the request's own WSGI variables, not the
  process environment that runserver copies into ``request.META`` (DATABASE_URL).
* The Procfile's web process listens on 127.0.0.1 unless WEB_ADDRESS opens it.
"""

import os
import re
import secrets
import socket
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import RequestFactory, override_settings
from django.urls import reverse
from django.views.debug import technical_500_response

from {{ cookiecutter.project_slug }}.exports.models import ExportJob

from .conftest import _test_database_url, free_port, start_process, stop_processes, wait_for

NONCE = re.compile(r"'nonce-([^']+)'")
# A <script> that runs: no src (inline), not a JSON data block (json_script).
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))([^>]*)>", re.IGNORECASE)


@pytest.fixture
def signed_in(client, db):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    client.force_login(user)
    return user


def pages(user) -> list[str]:
    job = ExportJob.objects.create(user=user)  # pending: its page polls its progress
    return [
        "/",
        reverse("login"),
        reverse("payments:checkout"),
        reverse("exports:list"),
        reverse("exports:detail", args=[job.pk]),
        "/admin/login/",
    ]


@override_settings(STRIPE_SECRET_KEY="sk_test_x", STRIPE_PUBLISHABLE_KEY="pk_test_x")  # Stripe.js on the checkout
def test_every_inline_script_carries_the_nonce_of_its_responses_policy(client, signed_in):
    inline_scripts = 0
    for url in pages(signed_in):
        response = client.get(url)
        assert response.status_code == 200, url
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy, policy
        assert "object-src 'none'" in policy, policy
        assert "'unsafe-inline'" not in policy, policy
        assert "'unsafe-eval'" not in policy, policy
        scripts = INLINE_SCRIPT.findall(response.content.decode())
        nonces = NONCE.findall(policy)
        for attributes in scripts:
            assert f'nonce="{nonces[0]}"' in attributes, (url, attributes)
        inline_scripts += len(scripts)
    assert inline_scripts >= 3  # the checkout's, the export list's and the export page's


def test_each_response_gets_a_nonce_of_its_own(client, signed_in):
    first, second = (client.get(reverse("exports:list")).headers["Content-Security-Policy"] for _ in range(2))
    assert NONCE.findall(first) != NONCE.findall(second)


# Random secrets: the error page also shows the source lines around each frame, this
# file's included, so a secret written here would be found there.
SECRETS = {name: secrets.token_hex(12) for name in ("database", "stripe", "vendor", "session", "redis")}
# What runserver puts into request.META from the process environment, and a cookie.
ENVIRONMENT = {
    "DATABASE_URL": f"postgres://app:{SECRETS['database']}@db:5432/app",
    "STRIPE_SECRET_KEY": f"sk_live_{SECRETS['stripe']}",
    "SOME_VENDOR_CREDENTIALS": SECRETS["vendor"],  # a name no deny-list knows
    "HTTP_COOKIE": f"sessionid={SECRETS['session']}",
}


def broken_page(request):
    raise RuntimeError("a broken page")


def test_the_debug_error_page_shows_no_secret_from_the_environment(settings):
    """runserver's request.META holds the whole environment: the page must not show it."""
    settings.DEBUG = True
    settings.REDIS_URL = f"redis://:{SECRETS['redis']}@redis:6379/0"
    request = RequestFactory().get("/broken/", HTTP_USER_AGENT="pytest-agent", **ENVIRONMENT)
    try:
        broken_page(request)
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()

    assert "a broken page" in page  # the page still helps
    assert "pytest-agent" in page
    assert "SOME_VENDOR_CREDENTIALS" in page  # the name is shown, its value is not
    assert not [name for name, secret in SECRETS.items() if secret in page]


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (Linux: /proc/net/tcp{,6})."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    addresses.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    addresses.add(address)
    return addresses


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
@pytest.mark.parametrize(("web_address", "expected"), [(None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})])  # noqa: S104
def test_the_development_server_listens_on_loopback_unless_opened(tmp_path, db, web_address, expected):
    """The Procfile's web line, as honcho (make dev) runs it."""
    port = free_port()
    env = os.environ | {
        "PORT": str(port),
        "DATABASE_URL": _test_database_url(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if web_address:
        env["WEB_ADDRESS"] = web_address
    process = start_process("web", env, tmp_path / "web.log")
    try:
        found = wait_for(lambda: listening_addresses(port), 60, "the web process to listen")
        assert found == expected, (tmp_path / "web.log").read_text()[-2000:]
    finally:
        stop_processes([process])
