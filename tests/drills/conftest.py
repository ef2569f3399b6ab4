"""Fixtures of the failure drills: one baked project, its own database and Redis, every pool.

Once per session: bake the template (default options), create a Postgres
database for it, migrate, seed the ``demo`` user, start a throwaway
``redis-server`` (broker and result backend, append-only file fsynced on every
write, so a crash loses nothing that was acknowledged), and start the Procfile's
``worker-high``, ``worker-default``, ``worker-export``, ``beat`` and ``outbox-relay`` as
subprocesses, each in its own process group, exactly as honcho would.

Drills break things (kill a pool, crash Redis, cut every database connection),
then assert on durable outcomes only: rows in the database, bytes of files, lines
the workers logged. Before each drill the ``pools`` fixture restarts whatever a
previous drill left dead, so the drills do not depend on their order.

Needs PostgreSQL (trust auth for ``postgres``) on 127.0.0.1 and a ``redis-server``
binary; without them the drills are skipped, or fail when ``CI`` is set.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery
from cookiecutter.main import cookiecutter

from ..conftest import POSTGRES, free_port, missing, reachable

TEMPLATE = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")
# 50 batches of 500 rows (config.settings.test), 0.2 s apart: an export takes
# about 10 s, long enough to break it part-way through.
TRANSACTIONS = 25_000
WORKER_POOLS = ("worker-high", "worker-default", "worker-export")
# Every long-running process of the Procfile the drills run (web and flower are not needed).
PROCESSES = (*WORKER_POOLS, "beat", "outbox-relay")
# Small pools for a 2-core machine; two processes on worker-high so that a
# payment can be in flight while another message waits.
CONCURRENCY = {"WORKER_HIGH_CONCURRENCY": "2", "WORKER_DEFAULT_CONCURRENCY": "1", "WORKER_EXPORT_CONCURRENCY": "1"}
STARTUP_TIMEOUT = 90


def wait_for(predicate, timeout: float = 60, message: str = "condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; return that, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
    return value


@pytest.fixture(scope="session")
def drill_services():
    """Postgres and a redis-server binary. Missing: fail in CI, skip elsewhere."""
    absent = []
    if not reachable(POSTGRES):
        absent.append(f"Postgres on {POSTGRES[0]}:{POSTGRES[1]}")
    if not shutil.which("redis-server"):
        absent.append("the redis-server binary (apt install redis-server)")
    if absent:
        missing(f"failure drills need {' and '.join(absent)}")


# ------------------------------------------------------------------------------
# A Redis of our own, which the Redis drill may crash and restart.
# ------------------------------------------------------------------------------
@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server on the same port and data directory: it replays its AOF."""
        # appendfsync always: every write is on disk before Redis answers, as a
        # broker that must not lose acknowledged messages should be configured.
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen([shutil.which("redis-server"), *args], start_new_session=True)
        wait_for(self.ping, 30, "redis-server to answer")

    def ping(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def crash(self) -> None:
        """SIGKILL: no goodbye to clients, no final save."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def redis_server(drill_services, tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------
# The baked project, its database and the driver.
# ------------------------------------------------------------------------------
@dataclass
class Project:
    path: Path
    env: dict[str, str]
    database: str
    reference: bytes = b""

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{self.database}"

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> str:
        result = subprocess.run(
            args,
            cwd=self.path,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def driver(self, *args) -> dict:
        """Run ``drill_driver.py`` in the project; return the JSON it printed."""
        return json.loads(self.run("python", "drill_driver.py", *map(str, args)).splitlines()[-1])

    def sql(self, query: str, params=()) -> list[tuple]:
        """Read (or break) the database from outside the project, on a connection of our own."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def scalar(self, query: str, params=()):
        return self.sql(query, params)[0][0]

    # Outcomes the drills poll for, straight from the tables.
    def export(self, job: int) -> dict:
        query = "SELECT status, processed_rows, lease_owner, parts FROM exports_exportjob WHERE id = %s"
        status, processed_rows, lease_owner, parts = self.sql(query, [job])[0]
        return {"status": status, "processed_rows": processed_rows, "lease_owner": lease_owner, "parts": parts}

    def export_progress(self, job: int) -> float:
        return self.export(job)["processed_rows"] / TRANSACTIONS

    def export_completed(self, job: int) -> bool:
        return self.export(job)["status"] == "completed"

    def orders_in(self, status: str, orders: list[int]) -> int:
        return self.scalar("SELECT count(*) FROM payments_order WHERE status = %s AND id = ANY(%s)", [status, orders])

    def resets_sent(self, requests: list[int]) -> int:
        query = "SELECT count(*) FROM users_passwordresetrequest WHERE sent_at IS NOT NULL AND id = ANY(%s)"
        return self.scalar(query, [requests])


def _admin(statement: str) -> None:
    with psycopg.connect(f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/postgres", autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def project(drill_services, redis_server, tmp_path_factory) -> Project:
    workdir = tmp_path_factory.mktemp("drills")
    # Default options, with the broker spelled out: the drills crash Redis as the broker.
    path = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(workdir), extra_context={"broker": "redis"}))
    shutil.copy(DRIVER, path / "drill_driver.py")
    database = f"drills_{os.getpid()}"
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{database}",
        "REDIS_URL": redis_server.url,
        # The whole server is the drills': their test settings keep to its database 0.
        "TEST_REDIS_DB": "0",
        # Explicit, so that neither this shell nor the project's .env can point elsewhere.
        "CELERY_BROKER_URL": redis_server.url,
        "CELERY_RESULT_BACKEND": redis_server.url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_WORKER_AUTORELOAD": "0",
        "CELERY_LOG_LEVEL": "INFO",
        "DJANGO_LOG_LEVEL": "INFO",
        "DJANGO_MEDIA_ROOT": str(workdir / "media"),
        "HEALTHCHECK_DIR": str(workdir / "health"),
        # Slow exports down (0.2 s per batch) so that a drill can break them part-way.
        "EXPORT_THROTTLE_SECONDS": "0.2",
        # Every login and reset request of the drills and the soak comes from one address
        # (and some to one email): lift the abuse limits, which the baked suite tests.
        "PASSWORD_RESETS_PER_CLIENT": "1000000",
        "PASSWORD_RESETS_PER_ADDRESS": "1000000",
        "LOGIN_FAILURES_PER_CLIENT": "1000000",
        # Every email a file (the soak counts them across processes and restarts).
        "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "DJANGO_EMAIL_FILE_PATH": str(workdir / "mail"),
        # The web process and Flower, for the soak (the other drills do not start them).
        "PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
        "FLOWER_BASIC_AUTH": "drills:drills-password",
        **CONCURRENCY,
    }
    _admin(f'DROP DATABASE IF EXISTS "{database}"')
    _admin(f'CREATE DATABASE "{database}"')
    try:
        baked = Project(path, env, database)
        baked.run("python", "manage.py", "migrate", "--no-input")
        baked.run("python", "manage.py", "seed_demo_data", "--transactions", str(TRANSACTIONS), "--orders", "0")
        baked.reference = Path(baked.driver("reference")["path"]).read_bytes()
        yield baked
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# ------------------------------------------------------------------------------
# The Procfile's processes.
# ------------------------------------------------------------------------------
def procfile(path: Path) -> dict[str, str]:
    lines = (path / "Procfile").read_text().splitlines()
    return {
        name.strip(): command.strip()
        for name, command in (line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))
    }


@dataclass
class Pools:
    """The worker pools and beat of the baked project, started, signalled and restarted by name."""

    project: Project
    logs_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Where each process's current life begins in its log.
    log_offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        # A bare Celery client on the same broker: enough to ping and inspect the pools.
        self.control = Celery("drills", broker=self.project.env["CELERY_BROKER_URL"]).control

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def current_log(self, name: str) -> str:
        """What ``name`` logged in its current life (since it was last started)."""
        return self.log_path(name).read_bytes()[self.log_offsets[name] :].decode(errors="replace")

    def hostname(self, name: str) -> str:
        return f"{name.removeprefix('worker-')}@{socket.gethostname()}"

    def start(self, name: str, env: dict | None = None) -> None:
        """Run the Procfile line ``name`` as honcho does: through a shell, in its own process group."""
        command = ["/bin/sh", "-c", f"exec {procfile(self.project.path)[name]}"]
        self.processes[name] = self.spawn_helper(command, name, env)

    def spawn_helper(self, command: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        """Start ``command`` in the project (``env`` added to its environment), in its own process group."""
        self.log_offsets[name] = self.log_path(name).stat().st_size if self.log_path(name).exists() else 0
        return subprocess.Popen(
            command,
            cwd=self.project.path,
            env=self.project.env | (env or {}),
            stdout=self.log_path(name).open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def wait_until_ready(self, names, timeout: float = STARTUP_TIMEOUT) -> None:
        """Workers answer a ping; beat has touched its heartbeat file since it started; web and flower answer HTTP."""
        started = time.time()
        workers = {self.hostname(name) for name in names if name.startswith("worker-")}
        beat_file = Path(self.project.env["HEALTHCHECK_DIR"]) / "beat.heartbeat"

        def ready() -> bool:
            for name in names:
                if not self.running(name):
                    pytest.fail(f"{name} exited:\n{self.log(name)[-5000:]}")
            answered = set()
            if workers:
                try:
                    replies = self.control.ping(destination=sorted(workers), timeout=1.0) or []
                except (redis.RedisError, OSError):
                    # Our connection did not survive a drill that restarted Redis;
                    # the next ping reconnects.
                    replies = []
                answered = {host for reply in replies for host in reply}
            beat_ready = "beat" not in names or (beat_file.exists() and beat_file.stat().st_mtime >= started - 1)
            servers = [port for name, port in self.http_ports().items() if name in names]
            return workers <= answered and beat_ready and all(map(answers_http, servers))

        wait_for(ready, timeout, f"{', '.join(names)} to be ready", interval=0.5)

    def signal(self, name: str, sig: signal.Signals, whole_group: bool = False, timeout: float = 60) -> None:
        """Signal a process (as Docker does), or its whole process group (as the OOM killer might)."""
        process = self.processes[name]
        os.killpg(process.pid, sig) if whole_group else os.kill(process.pid, sig)
        process.wait(timeout=timeout)

    def http_ports(self) -> dict[str, int]:
        return {"web": int(self.project.env["PORT"]), "flower": int(self.project.env["FLOWER_PORT"])}

    def restart(self, name: str, env: dict | None = None) -> None:
        self.start(name, env)
        self.wait_until_ready([name])

    def child_running(self, name: str, task_id: str) -> int:
        """The pid of the pool process that runs task ``task_id`` right now."""
        host = self.hostname(name)

        def find():
            active = self.control.inspect(destination=[host], timeout=2.0).active() or {}
            return next((task["worker_pid"] for task in active.get(host, []) if task["id"] == task_id), None)

        return wait_for(find, 30, f"task {task_id} to run on {name}")

    def heal(self, names=PROCESSES) -> None:
        """Restart whatever a previous drill (or fault) left dead."""
        dead = [name for name in names if not self.running(name)]
        for name in dead:
            self.start(name)
        if dead:
            self.wait_until_ready(dead)

    def stop_all(self, timeout: float = 30) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def session_pools(project, tmp_path_factory):
    pools = Pools(project, tmp_path_factory.mktemp("logs"))
    try:
        pools.heal()
        yield pools
    finally:
        pools.stop_all()


@pytest.fixture
def pools(session_pools) -> Pools:
    """Every pool and beat, up and answering, whatever the previous drill did to them."""
    session_pools.heal()
    return session_pools


def answers_http(port: int) -> bool:
    """Something answers HTTP on the port (any status: Flower asks for a password)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def part_owners(parts: list[str]) -> list[str]:
    """The runners (lease owners) that wrote an export's parts, in the order they wrote them."""
    return list(dict.fromkeys(name.rsplit("-", 1)[1].removesuffix(".csv") for name in parts))


def assert_each_order_charged_once(state: dict, orders: list[int]) -> None:
    """Every order paid, one charge per idempotency key in the provider's ledger, the one we recorded."""
    for order_id in orders:
        order = state["orders"][str(order_id)]
        assert order["status"] == "paid"
        assert state["charges_per_key"][order["key"]] == 1
        assert state["ledger"][order["key"]] == order["charge_id"]
    # The drill hit payments in flight: they ran again, and still charged once.
    assert any(state["orders"][str(order_id)]["attempts"] > 1 for order_id in orders)
