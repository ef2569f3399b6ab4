"""Fixtures for integration tests: real worker pools on real Redis and Postgres.

The pools are started exactly as in production, from the Procfile lines, as
subprocesses of the test run. They load ``config.settings.test`` and reach the
test database through ``DATABASE_URL``, and the broker through
``CELERY_BROKER_URL``: the run's own Redis database (tests/redis_database.py; with
RabbitMQ, the run's throwaway vhost, tests/rabbitmq.py). Their node names start
with ``test-<pid>-``: a running ``make dev`` and the tests never see each other.

Without the broker, Redis or Postgres the integration tests are skipped on a
laptop, and fail in CI (``CI`` set), where a skip would hide missing infrastructure.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings
from django.db import connection

from config import topology
from config.celery_app import app as celery_app

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 90
# Before every node name of this run's pools: test-123-high@host.
NODE_PREFIX = f"test-{os.getpid()}-"


def pytest_collection_modifyitems(items):
    """A test that uses the worker pools needs the test database, even if it never queries it.

    pytest-django creates the test database only for tests that ask for one; the
    pools (and web, beat, flower next to them) connect to it all the same. Without
    this, a file like test_native_processes.py run on its own would point them at
    the real database.
    """
    for item in items:
        if "worker_pools" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("django_db"):
            item.add_marker(pytest.mark.django_db(transaction=True))


def procfile() -> dict[str, str]:
    """The Procfile as {process name: command}."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {
        name.strip(): command.strip()
        for name, command in (line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))
    }


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 60, message: str = "condition", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; return that, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
    return value


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"integration infrastructure missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url():
    """The broker every process of the run uses (with RabbitMQ: the run's throwaway vhost)."""
    url = settings.CELERY_BROKER_URL
    if not _reachable(url, 5672 if url.startswith(("amqp", "pyamqp")) else 6379):
        _missing(f"no broker at {url}: start it, or set CELERY_BROKER_URL / REDIS_URL")
    return url


def publish_raw(queue_name: str, body: bytes, content_type: str, headers: dict, encoding: str = "utf-8") -> None:
    """Put a message on a task queue exactly as given: no serializer, no Celery in between
    (a misconfigured or out-of-date producer, a poison message)."""
    queue = celery_app.amqp.queues[queue_name]
    with celery_app.connection_for_write() as connection:
        connection.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            headers=headers,
            content_type=content_type,
            content_encoding=encoding,
        )


def start_process(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Run the Procfile line ``name`` the way honcho does: through a shell, from the project root."""
    return subprocess.Popen(
        ["/bin/sh", "-c", f"exec {procfile()[name]}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole
    )


def stop_processes(processes, timeout: float = 30) -> None:
    """SIGTERM (what Docker and honcho send), then SIGKILL whatever is left."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class WorkerPools:
    processes: dict[str, subprocess.Popen]
    logs: dict[str, Path]
    media_root: Path
    env: dict[str, str]

    def hostname(self, pool_name: str) -> str:
        return f"{self.env['WORKER_NODE_PREFIX']}{topology.pool_named(pool_name).node}@{socket.gethostname()}"

    def log(self, pool_name: str) -> str:
        return self.logs[pool_name].read_text(errors="replace")

    def wait_until_ready(self, names, timeout: float = STARTUP_TIMEOUT) -> None:
        expected = {self.hostname(name) for name in names}
        deadline = time.monotonic() + timeout
        answered: set[str] = set()
        while answered != expected:
            for name in names:
                process = self.processes[name]
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker pools did not answer within {timeout}s: {expected - answered}")
            replies = celery_app.control.ping(destination=list(expected), timeout=1.0) or []
            answered = {host for reply in replies for host in reply} & expected

    def kill(self, pool_name: str, sig: signal.Signals, whole_group: bool = False, timeout: float = 60) -> None:
        """Signal a pool's main process (as Docker does), or its whole process group (SIGKILL, OOM).

        A pool still running ``timeout`` seconds later fails the test, and is gone
        all the same, so that a ``restart()`` works and one hang does not fail every
        later test: first SIGUSR1 (Celery's worker logs the stack of each of its
        threads: where it hangs), then SIGKILL to the group, as Docker ends a stop
        after its grace period. The failure shows the end of the pool's log.
        """
        process = self.processes[pool_name]
        os.killpg(process.pid, sig) if whole_group else os.kill(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGUSR1)
            time.sleep(2)  # time to write the stacks
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            tail = "\n".join(self.log(pool_name).splitlines()[-150:])
            pytest.fail(f"{pool_name} still ran {timeout}s after {sig.name}; the end of its log:\n{tail}")

    def restart(self, pool_name: str, **env: str) -> None:
        """Start the pool again from its Procfile line, as a process manager would (``env``: overrides)."""
        self.processes[pool_name] = start_process(pool_name, self.env | env, self.logs[pool_name])
        self.wait_until_ready([pool_name])


def _test_database_url() -> str:
    db = connection.settings_dict
    credentials = quote(db["USER"] or "")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"])
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def worker_pools(broker_url, django_db_setup, django_db_blocker, tmp_path_factory):
    """Start every ``worker-*`` process of the Procfile; stop them at the end."""
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            _missing("integration tests need Postgres: set DATABASE_URL=postgres://...")
        database_url = _test_database_url()

    logs_dir = tmp_path_factory.mktemp("worker-logs")
    media_root = tmp_path_factory.mktemp("media")
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_WORKER_AUTORELOAD": "0",
        "WORKER_NODE_PREFIX": NODE_PREFIX,
        "DJANGO_MEDIA_ROOT": str(media_root),
        "HEALTHCHECK_DIR": str(tmp_path_factory.mktemp("health")),
        # Slow exports down (0.2 s per 500-row batch) so tests can stop them part-way;
        # and imports (0.2 s per 1,000 rows).
        "EXPORT_THROTTLE_SECONDS": "0.2",
        "IMPORT_THROTTLE_SECONDS": "0.2",
        # The Procfile says "python": make that this interpreter, as an activated venv would.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Small pools (CI machines have two cores), but more than one process on
    # worker-high so that concurrent deliveries really run concurrently.
    for pool in topology.POOLS:
        env.setdefault(pool.concurrency_env, "4" if pool.name == "worker-high" else "1")

    celery_app.control.purge()
    processes, logs = {}, {}
    for name in procfile():
        if name.startswith("worker-"):
            logs[name] = logs_dir / f"{name}.log"
            processes[name] = start_process(name, env, logs[name])
    pools = WorkerPools(processes, logs, media_root, env)
    try:
        pools.wait_until_ready(list(processes))
        yield pools
    finally:
        stop_processes(pools.processes.values())


# The demo user's transactions in export tests on the pools: 50 batches of 500,
# about 10 s on the throttled export pool (EXPORT_THROTTLE_SECONDS above).
DEMO_ROWS = 25_000


@pytest.fixture
def demo(live_celery):
    """The ``demo`` user with DEMO_ROWS transactions (``seed_demo_data``)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("seed_demo_data", transactions=DEMO_ROWS, orders=0)
    return get_user_model().objects.get(username="demo")


@pytest.fixture
def live_celery(worker_pools, transactional_db, settings):
    """Send tasks through the broker to the real pools instead of running them eagerly."""
    settings.MEDIA_ROOT = worker_pools.media_root  # read the files the workers write
    celery_app.conf.task_always_eager = False
    try:
        yield worker_pools
    finally:
        celery_app.conf.task_always_eager = True
