"""A throwaway RabbitMQ virtual host per test run, so tests never touch real queues.

A pytest plugin (the root conftest.py loads it): before the first test, the
run's broker URL is pointed at a new vhost, for this process and for every
process the tests start. It is created through the management API when that
answers (docker compose publishes it; so does the generated GitHub workflow),
else with ``rabbitmqctl`` (a local installation), and deleted with its queues
at the end of the run.
"""

import json
import os
import secrets
import shutil
import subprocess
import warnings
from contextlib import ExitStack, contextmanager
from urllib.parse import quote, urlsplit, urlunsplit
from urllib.request import HTTPBasicAuthHandler, HTTPPasswordMgrWithDefaultRealm, Request, build_opener

import pytest
from django.conf import settings

from .conftest import _reachable

EVERYTHING = {"configure": ".*", "write": ".*", "read": ".*"}


class ManagementApi:
    def __init__(self, broker_url: str):
        parts = urlsplit(broker_url)
        self.user, self.password = parts.username or "guest", parts.password or "guest"
        self.base = os.environ.get("RABBITMQ_MANAGEMENT_URL", f"http://{parts.hostname or '127.0.0.1'}:15672")
        if urlsplit(self.base).scheme not in ("http", "https"):
            raise ValueError(f"RABBITMQ_MANAGEMENT_URL must be http(s): {self.base}")

    def available(self) -> bool:
        return _reachable(self.base, 15672)

    def _call(self, method: str, path: str, body: dict | None = None) -> None:
        passwords = HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, self.base, self.user, self.password)
        data = json.dumps(body).encode() if body is not None else None
        request = Request(f"{self.base}/api/{path}", data=data, method=method)  # noqa: S310 (scheme checked above)
        request.add_header("content-type", "application/json")
        build_opener(HTTPBasicAuthHandler(passwords)).open(request, timeout=10).close()

    def add_vhost(self, vhost: str) -> None:
        self._call("PUT", f"vhosts/{quote(vhost, safe='')}")
        self._call("PUT", f"permissions/{quote(vhost, safe='')}/{quote(self.user, safe='')}", EVERYTHING)

    def delete_vhost(self, vhost: str) -> None:
        self._call("DELETE", f"vhosts/{quote(vhost, safe='')}")


class Rabbitmqctl:
    def __init__(self, broker_url: str):
        self.user = urlsplit(broker_url).username or "guest"
        self.path = shutil.which("rabbitmqctl")

    def available(self) -> bool:
        return self.path is not None

    def _run(self, *args: str) -> None:
        subprocess.run([self.path, "--quiet", *args], check=True, capture_output=True, timeout=60)

    def add_vhost(self, vhost: str) -> None:
        self._run("add_vhost", vhost)
        self._run("set_permissions", "-p", vhost, self.user, *EVERYTHING.values())

    def delete_vhost(self, vhost: str) -> None:
        self._run("delete_vhost", vhost)


@contextmanager
def throwaway_vhost(broker_url: str):
    """Yield ``broker_url`` pointing at a new, empty vhost; delete the vhost afterwards."""
    admin = next((tool for tool in (ManagementApi(broker_url), Rabbitmqctl(broker_url)) if tool.available()), None)
    if admin is None:
        raise RuntimeError("cannot create a RabbitMQ vhost: no management API on port 15672 and no rabbitmqctl")
    vhost = f"test_{secrets.token_hex(6)}"
    admin.add_vhost(vhost)
    try:
        yield urlunsplit(urlsplit(broker_url)._replace(path="/" + quote(vhost, safe="")))
    finally:
        admin.delete_vhost(vhost)


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_vhost():
    """Point the whole run at a throwaway vhost, before anything connects to the broker.

    Celery reads ``CELERY_BROKER_URL`` from the environment before its own config,
    and caches its producer pool on first use: hence the variable, and hence a
    session fixture that runs before every test rather than inside the first
    integration test.
    """
    url = settings.CELERY_BROKER_URL
    with ExitStack() as stack:
        try:
            throwaway = stack.enter_context(throwaway_vhost(url)) if _reachable(url, 5672) else url
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            if os.environ.get("CI"):
                pytest.fail(f"RabbitMQ throwaway vhost: {error}", pytrace=False)
            warnings.warn(f"{error}; the tests use {url} as it is", stacklevel=1)
            throwaway = url
        # Unreachable: unchanged, and the integration tests say what is missing.
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(settings, "CELERY_BROKER_URL", throwaway)
        patch.setenv("CELERY_BROKER_URL", throwaway)
        yield throwaway
