"""`docker-compose.production.yml`, for real, exactly as the baked README's deploy section says.

The image is built from the production requirements alone (the Dockerfile's
production target never sees requirements/local.txt), so a dependency that only the
test tools pulled in shows up here as a crash at start-up.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from .conftest import make_stack
from .stack import Stack, wait_until

FILES = ["docker-compose.production.yml"]
DOMAIN = "example.com"  # the template's default domain_name


def get(stack: Stack, path: str) -> tuple[int, dict, bytes]:
    """A request as the TLS-terminating proxy forwards it: the site's host, https."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.env['PORT']}{path}", headers={"Host": DOMAIN, "X-Forwarded-Proto": "https"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def readme_commands(stack: Stack) -> list[str]:
    """The shell commands of the README's deploy section, in order."""
    readme = (stack.path / "README.md").read_text()
    section = readme.split("## Deploy with docker compose", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


@pytest.fixture(scope="module")
def production_stack(docker_ready, tmp_path_factory):
    stack = make_stack(tmp_path_factory, FILES)
    commands = readme_commands(stack)
    assert commands == ["docker compose -f docker-compose.production.yml up --build --wait"], commands
    with stack.started(seed_transactions=1000):  # up --build: the README's command, with --detach and a timeout
        yield stack


@pytest.fixture
def stack(production_stack) -> Stack:
    return production_stack


def test_every_service_is_healthy(stack):
    for container in stack.containers():
        service = stack.service_of(container)
        assert container["State"]["Health"]["Status"] == "healthy", service
        assert container["RestartCount"] == 0, service


def test_gunicorn_serves_pages_and_static_files(stack):
    status, headers, _ = get(stack, "/healthz")
    assert status == 200
    assert headers.get("Server", "").startswith("gunicorn")
    assert get(stack, "/readyz")[0] == 200
    status, _, body = get(stack, "/admin/login/")
    assert status == 200 and b"csrfmiddlewaretoken" in body
    static = re.search(rb'href="(/static/admin/css/base\.[0-9a-f]+\.css)"', body)
    assert static, "the admin page links no hashed stylesheet (collectstatic did not run?)"
    status, headers, _ = get(stack, static.group(1).decode())
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/css")
    assert "immutable" in headers.get("Cache-Control", "")  # whitenoise serves the hashed file


def test_plain_http_is_redirected_to_https(stack):
    request = urllib.request.Request(f"http://127.0.0.1:{stack.env['PORT']}/", headers={"Host": DOMAIN})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(NoRedirect).open(request, timeout=10)
    assert answer.value.code == 301 and answer.value.headers["Location"] == f"https://{DOMAIN}/"


def test_check_deploy_raises_only_the_sandbox_warning(stack):
    result = stack.compose("exec", "-T", "django", "python", "manage.py", "check", "--deploy", check=False)
    assert result.returncode == 0, result.stderr
    issues = re.findall(r"\(([\w.]+\.[EW]\d{3})\)", result.stdout + result.stderr)
    assert issues == ["payments.W001"], result.stdout + result.stderr


def test_no_container_runs_as_root(stack):
    for container in stack.containers():
        processes = stack.process_uids(container)
        assert processes, stack.service_of(container)
        root = [command for uid, command in processes if uid == 0]
        assert not root, f"{stack.service_of(container)} runs as root: {root}"


def test_only_the_web_port_is_published_and_only_on_localhost(stack):
    published = {}
    for container in stack.containers():
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                published.setdefault(stack.service_of(container), []).append(binding["HostIp"])
    assert published == {"django": ["127.0.0.1"]}  # flower, postgres and redis are internal


def test_redis_restart_during_payments_loses_and_doubles_nothing(stack):
    orders = stack.action("payments-start", count=30, slow=0.5)["orders"]
    wait_until(lambda: stack.action("payments-status", orders=json.dumps(orders))["paid"] >= 5, 120, "5 payments")

    stack.compose("restart", "redis")  # append-only file: queued and unacked messages survive

    final = wait_until(
        lambda: (s := stack.action("payments-status", orders=json.dumps(orders)))["paid"] == len(orders) and s,
        300,
        "every order paid after the Redis restart",
        interval=3,
    )
    assert final["charges"] == final["charged_keys"] == len(orders)  # each charged exactly once
