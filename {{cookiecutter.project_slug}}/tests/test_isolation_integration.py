"""A test run never touches the developer's running stack (``make dev``) next to it.

Staged here: the developer's stack is a worker-high started with the local settings,
on a Redis database standing in for REDIS_URL's{% if cookiecutter.broker == "rabbitmq" %} and a RabbitMQ vhost for "/"{% endif %}, with
an SQLite database of unpaid orders, a task waiting in its export queue (no export
pool runs) and a metrics key. A whole test run then starts in another
"terminal" (a pytest subprocess with the developer's environment) and pays orders
through its own pools. Afterwards the developer's worker has received nothing, the
orders are unpaid, the waiting task and the metrics are still there, and the test
run has left no key in Redis.
"""

import json
import os
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection

from .conftest import ROOT, _missing, _test_database_url, start_process, stop_processes, wait_for
{%- if cookiecutter.broker == "rabbitmq" %}
from .rabbitmq import throwaway_vhost
{%- endif %}

pytestmark = pytest.mark.integration

# Run in the developer's shell (manage.py shell -c): the stack's state, as JSON.
DEV_STATE = """
import json
from config import topology
from {{ cookiecutter.project_slug }}.core import metrics
from {{ cookiecutter.project_slug }}.payments.models import Order
print(json.dumps({
    "orders": sorted(Order.objects.values_list("status", flat=True)),
    "export_queue": metrics.queue_depths().get("export"),
    "latency": metrics.latencies(),
}))
"""
DEV_SETUP = """
from django.contrib.auth import get_user_model
from {{ cookiecutter.project_slug }}.core import metrics
from {{ cookiecutter.project_slug }}.exports.tasks import generate_csv_export
from {{ cookiecutter.project_slug }}.payments.models import Order
user = get_user_model().objects.create_user("developer", "dev@example.com", "pw")
for amount in range(1000, 1005):
    Order.objects.create(user=user, amount_cents=amount)
generate_csv_export.delay(424242)
metrics.record_latency("high", 0.25)
"""


def empty_redis_databases(count: int) -> list[int]:
    """Numbers of Redis databases on the tests' server that hold no key and nobody uses here."""
    taken = {_db(settings.REDIS_URL), _db(settings.DEVELOPMENT_REDIS_URL)}
    found = []
    for number in range(1, 16):
        if number not in taken and redis.Redis.from_url(_on(number)).dbsize() == 0:
            found.append(number)
        if len(found) == count:
            return found
    pytest.fail(f"fewer than {count} empty Redis databases on {settings.REDIS_URL}")


def _db(url: str) -> int:
    return int(urlsplit(url).path.strip("/") or 0)


def _on(number: int) -> str:
    """The tests' Redis server, database ``number``."""
    return urlsplit(settings.REDIS_URL)._replace(path=f"/{number}").geturl()


@pytest.fixture
def developer(broker_url, tmp_path):
    """The developer's environment and running worker-high, as ``make dev`` would have them."""
    if connection.vendor != "postgresql":
        _missing("integration tests need Postgres: set DATABASE_URL=postgres://...")
    dev_db, test_db = empty_redis_databases(2)
    with ExitStack() as stack:
        env = {
            key: value
            for key, value in os.environ.items()
            # What this run exported for itself, not what a developer's shell has.
            if key not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "TEST_REDIS_DB", "DJANGO_SETTINGS_MODULE")
        } | {
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "REDIS_URL": _on(dev_db),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'dev.sqlite3'}",
            "CELERY_WORKER_AUTORELOAD": "0",
            "WORKER_HIGH_CONCURRENCY": "1",
            "HEALTHCHECK_DIR": str(tmp_path / "health"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
{%- if cookiecutter.broker == "rabbitmq" %}
        # The developer's "/" vhost: a throwaway one of its own, next to this run's.
        env["CELERY_BROKER_URL"] = stack.enter_context(throwaway_vhost(broker_url))
{%- endif %}
        stack.callback(lambda: [redis.Redis.from_url(_on(number)).flushdb() for number in (dev_db, test_db)])

        def dev(*args: str) -> str:
            result = subprocess.run(
                [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        dev("migrate", "--noinput")
        dev("shell", "-c", DEV_SETUP)
        log = tmp_path / "dev-worker-high.log"
        worker = start_process("worker-high", env, log)
        stack.callback(stop_processes, [worker])
        ping = [sys.executable, "-m", "celery", "--app=config.celery_app", "inspect", "ping"]
        ping += [f"--destination=high@{socket.gethostname()}", "--timeout=2"]

        def answers() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"the developer's worker-high exited:\n{log.read_text(errors='replace')}")
            # What the developer would type: celery inspect ping, in their environment.
            answer = subprocess.run(ping, cwd=ROOT, env=env, capture_output=True, timeout=60, check=False)
            return answer.returncode == 0

        wait_for(answers, 90, "the developer's worker-high", interval=1)
        yield {"env": env, "dev": dev, "worker": worker, "log": log, "test_db": test_db}


def test_a_test_run_leaves_the_developers_stack_alone(developer):
    before = json.loads(developer["dev"]("shell", "-c", DEV_STATE).splitlines()[-1])
    assert before["orders"] == ["pending"] * 5
    assert before["export_queue"] == 1

    # Another terminal, the developer's environment: the README's test command.
    database = urlsplit(_test_database_url())
    env = developer["env"] | {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        # Its own Postgres test database, created and dropped by that run (no --reuse-db).
        "DATABASE_URL": database._replace(path=f"{database.path}_isolation").geturl(),
        "TEST_REDIS_DB": str(developer["test_db"]),
    }
    pytest_args = ["-q", "-o", "addopts=-p no:cacheprovider", "--create-db", "tests/test_routing_integration.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args, "-k", "payment or password_reset"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout, run.stdout

    assert developer["worker"].poll() is None, developer["log"].read_text()
    assert " received" not in developer["log"].read_text(), "the developer's worker ran a task of the tests"
    after = json.loads(developer["dev"]("shell", "-c", DEV_STATE).splitlines()[-1])
    assert after == before  # orders unpaid, the waiting task and the metrics intact
    leftovers = redis.Redis.from_url(_on(developer["test_db"])).keys()
    assert leftovers == [], f"the test run left keys in its Redis database: {leftovers[:20]}"
