"""The broker goes down: requests still answer at once, and nothing is lost or doubled.

A redis-server of this test's own is the broker. The Procfile's ``web``,
``worker-high``, ``worker-export`` and ``outbox-relay`` run against it, natively.
With the broker stopped, a checkout, a password reset and an export request go
through real HTTP; each must answer in under a second with its usual redirect.
Then the broker comes back, and each piece of work must be done exactly once.
"""

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import pytest
from celery import Celery
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils.crypto import get_random_string

from {{ cookiecutter.project_slug }}.exports.models import ExportJob, Transaction
from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage
from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge
from {{ cookiecutter.project_slug }}.users.models import PasswordResetRequest

from .conftest import (
    NODE_PREFIX,
    ROOT,
    _missing,
    _test_database_url,
    free_port,
    start_process,
    stop_processes,
    wait_for,
)

pytestmark = pytest.mark.integration
PROCESSES = ("worker-high", "worker-export", "outbox-relay", "web")
ANSWER_WITHIN = 1.0  # seconds, for a request made while the broker is down


class BrokerServer:
    """A redis-server on a free port with an append-only file: stopped and restarted with its data."""

    def __init__(self, directory):
        self.directory, self.port, self.process = directory, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen([shutil.which("redis-server"), *args], stdout=subprocess.DEVNULL)
        wait_for(self.answers, 10, "redis-server to start")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def stack(django_db_setup, django_db_blocker, transactional_db, tmp_path):
    """The broker and the Procfile's web, worker-high, worker-export and outbox-relay on it."""
    if not shutil.which("redis-server"):
        _missing("redis-server is not installed: cannot stage a broker outage")
    broker = BrokerServer(tmp_path)
    broker.start()
    web_port = free_port()
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": broker.url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_WORKER_AUTORELOAD": "0",
        "DJANGO_MEDIA_ROOT": str(tmp_path / "media"),
        "HEALTHCHECK_DIR": str(tmp_path / "health"),
        "PORT": str(web_port),
        "WORKER_HIGH_CONCURRENCY": "1",
        "WORKER_EXPORT_CONCURRENCY": "1",
        "OUTBOX_RELAY_INTERVAL": "0.5",
        "WORKER_NODE_PREFIX": NODE_PREFIX,
        # The Procfile says "python": make that this interpreter, as an activated venv would.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    logs = {name: tmp_path / f"{name}.log" for name in PROCESSES}
    processes = {name: start_process(name, env, logs[name]) for name in PROCESSES}
    # Not the current app: the project's shared tasks must stay bound to config.celery_app.
    control = Celery("outage", broker=broker.url, set_as_current=False).control
    try:
        hosts = {f"{NODE_PREFIX}{name.removeprefix('worker-')}@{socket.gethostname()}" for name in PROCESSES[:2]}

        def ready():
            for name, process in processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited:\n{logs[name].read_text(errors='replace')[-3000:]}")
            replies = control.ping(destination=sorted(hosts), timeout=1.0) or []
            return {host for reply in replies for host in reply} == hosts and request(web_port, "GET", "/healthz")

        wait_for(ready, 90, "the workers and web to answer")
        yield {"broker": broker, "port": web_port, "logs": logs, "env": env}
    finally:
        stop_processes(processes.values())
        broker.stop()


def request(port: int, method: str, path: str, data: str = "", cookies: dict | None = None):
    """(status, Location, seconds); None while nothing listens. Redirects are not followed."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookies:
        headers["Cookie"] = "; ".join(f"{key}={value}" for key, value in cookies.items())
        headers["X-CSRFToken"] = cookies.get("csrftoken", "")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.monotonic()
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        response.read()
    except OSError:
        return None
    finally:
        connection.close()
    return response.status, response.getheader("Location"), time.monotonic() - started


def checkout_form(amount: str) -> str:
    """A submitted checkout form: one submission (a fresh key, as each rendered form carries)."""
    return urlencode(
        {"amount": amount, "currency": "EUR", "payment_method": "pm_card_visa",
         "submission_key": uuid.uuid4()}
    )  # fmt: skip


def log_count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


# --8<-- [start:outage]
def test_broker_down_requests_answer_at_once_and_run_once_it_is_back(stack):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    Transaction.objects.bulk_create(
        Transaction(user=user, created_at=datetime(2026, 1, 1, tzinfo=UTC), amount=Decimal(n), currency="EUR",
                    description=f"row {n}")
        for n in range(1, 1201)
    )  # fmt: skip
    client = Client()
    client.force_login(user)  # a session row the web process reads
    cookies = {"sessionid": client.cookies["sessionid"].value, "csrftoken": get_random_string(32)}
    port = stack["port"]

    # Broker up: the request publishes right after its COMMIT (a connection is now pooled).
    assert request(port, "POST", "/payments/checkout/", checkout_form("10.00"), cookies)[0] == 302
    wait_for(lambda: Order.objects.filter(status=Order.Status.PAID).count() == 1, 60, "the first order to be paid")

    stack["broker"].stop()
    answers = {
        "checkout": request(port, "POST", "/payments/checkout/", checkout_form("25.00"), cookies),
        "password reset": request(port, "POST", "/accounts/password_reset/", "email=ada%40example.com", cookies),
        "export": request(port, "POST", "/exports/start/", "", cookies),
    }
    print({name: f"{answer[2] * 1000:.0f} ms" for name, answer in answers.items()})  # the measured figures
    for name, (status, _, seconds) in answers.items():
        assert status == 302, f"{name}: {status}"
        assert seconds < ANSWER_WITHIN, f"{name} took {seconds:.2f}s with the broker down"
    order = Order.objects.exclude(status=Order.Status.PAID).get()
    reset = PasswordResetRequest.objects.get()
    job = ExportJob.objects.get()
    assert answers["export"][1] == f"/exports/{job.pk}/"
    time.sleep(2)  # a few relay passes against the dead broker
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 3  # committed, waiting
    assert (order.status, job.status) == (Order.Status.PENDING, ExportJob.Status.PENDING)

    stack["broker"].start()  # same port, same data
    wait_for(lambda: not OutboxMessage.objects.filter(sent_at__isnull=True).exists(), 60, "the relay to publish")
    wait_for(lambda: Order.objects.get(pk=order.pk).status == Order.Status.PAID, 60, "the order to be paid")
    wait_for(lambda: PasswordResetRequest.objects.get(pk=reset.pk).sent_at, 60, "the reset email")
    wait_for(lambda: ExportJob.objects.get(pk=job.pk).status == ExportJob.Status.COMPLETED, 120, "the export")

    order.refresh_from_db()
    assert SandboxCharge.objects.filter(idempotency_key=str(order.idempotency_key)).count() == 1
    assert order.payment_attempts == 1
    assert ExportJob.objects.get(pk=job.pk).processed_rows == 1200
    high = stack["logs"]["worker-high"].read_text(errors="replace")
    assert log_count(high, rf"password reset email sent to user {user.pk}\b") == 1
    # Every message ran once: one run-log line per outbox task id, across the pools.
    runs = high + stack["logs"]["worker-export"].read_text(errors="replace")
    for message in OutboxMessage.objects.all():
        assert log_count(runs, rf"id={message.task_id} ") == 1, message
    # --8<-- [end:outage]


def test_the_relay_heartbeat_is_its_healthcheck_also_while_the_broker_is_down(stack):
    def healthcheck(**env) -> int:
        command = [sys.executable, "-m", "config.healthcheck", "outbox-relay"]
        return subprocess.run(command, cwd=ROOT, env=stack["env"] | env, capture_output=True, check=False).returncode

    wait_for(lambda: healthcheck() == 0, 30, "the relay's healthcheck to pass")
    stack["broker"].stop()  # the relay keeps looping (and trying): healthy, not restarted by compose
    time.sleep(2)
    assert healthcheck() == 0
    assert healthcheck(HEALTHCHECK_MAX_AGE="0") == 1  # a stale heartbeat fails
