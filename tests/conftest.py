"""Fixtures for testing the template: bake projects and run commands inside them."""

import http.cookiejar
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

TEMPLATE = Path(__file__).resolve().parent.parent
CHOICES = {
    key: value
    for key, value in json.loads((TEMPLATE / "cookiecutter.json").read_text()).items()
    if isinstance(value, list) and not key.startswith("_")
}


DEMO_LOGIN = re.compile(r"Log in at (\S+) as (\w+), password: (\S+)")


def sign_in(login_url: str, username: str, password: str) -> bool:
    """Sign in through Django's login form as a browser would (CSRF cookie and token)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(login_url, timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    request = urllib.request.Request(login_url, data=data.encode(), headers={"Referer": login_url})
    with opener.open(request, timeout=10) as page:  # a wrong password renders the form again
        return urllib.parse.urlsplit(page.url).path != urllib.parse.urlsplit(login_url).path


def all_pairs(choices: dict[str, list[str]]) -> list[dict[str, str]]:
    """Combinations of the choice options that contain every pair of values at least once.

    The options interact in pairs (storage and broker both shape the settings, ci
    and python_version the workflow), so covering every pair finds what the full
    product would, in a quarter of the bakes. Greedy and deterministic: the first
    combination (every option's default) comes first.
    """
    names = list(choices)

    def pairs(values) -> set:
        return {(a, values[a], b, values[b]) for a, b in itertools.combinations(names, 2)}

    candidates = [dict(zip(names, values, strict=True)) for values in itertools.product(*choices.values())]
    uncovered = set().union(*(pairs(candidate) for candidate in candidates))
    chosen = []
    while uncovered:
        best = max(candidates, key=lambda candidate: len(pairs(candidate) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


# Every pair of choice values (python_version, ci, storage, broker), each in some bake.
MATRIX = all_pairs(CHOICES)

POSTGRES = ("127.0.0.1", int(os.environ.get("POSTGRES_PORT", "5432")))
REDIS = ("127.0.0.1", int(os.environ.get("REDIS_PORT", "6379")))
RABBITMQ = ("127.0.0.1", int(os.environ.get("RABBITMQ_PORT", "5672")))


def matrix_id(context: dict) -> str:
    return "-".join(f"{value}" for value in context.values())


def run(args, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run a command in the baked project with this virtualenv's tools first on PATH."""
    environment = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    environment |= env or {}
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, check=False)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{' '.join(map(str, result.args))} failed:\n{result.stdout}\n{result.stderr}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(address) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def missing(reason: str):
    """What the test needs is not on this machine: fail in CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def redis_server(directory: Path):
    """A redis-server of the caller's own on a free port, keeping nothing on disk; yields its URL."""
    if not shutil.which("redis-server"):
        missing("the redis-server binary is needed (apt install redis-server)")
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen([shutil.which("redis-server"), *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not reachable(("127.0.0.1", port)):
            assert process.poll() is None and time.monotonic() < deadline, f"redis-server on port {port} did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def baked_suites_redis_database() -> int:
    """The Redis database the baked suites run in (their TEST_REDIS_DB), chosen once per run.

    The baked project's default, 15, when it is empty; otherwise the highest empty one
    above 0 (0 is what a developer's `make dev` uses): a baked suite refuses a database
    holding keys no test run wrote, and something else on this machine (another
    project, a process left over from an interrupted run) may be using 15. TEST_REDIS_DB
    in the environment wins. Unreachable Redis: 15 (the tests that need Redis say so).
    """
    if "TEST_REDIS_DB" in os.environ:
        return int(os.environ["TEST_REDIS_DB"])
    try:
        used = redis.Redis(*REDIS, socket_timeout=5, socket_connect_timeout=2).info("keyspace")
    except redis.RedisError:
        return 15
    for db in range(15, 0, -1):
        if f"db{db}" not in used:
            return db
    raise pytest.UsageError(f"every Redis database on port {REDIS[1]} holds keys: set TEST_REDIS_DB to one to use")


def pytest_configure(config):
    # Before any test: every baked project the suite runs (they inherit this environment).
    os.environ["TEST_REDIS_DB"] = str(baked_suites_redis_database())


# Redis databases on REDIS_PORT the suite must leave as it found them: 0, what a
# developer's `make dev` uses, and the baked suites' TEST_REDIS_DB. The drills and
# the compose suite run Redis servers of their own.
def watched_redis_databases() -> tuple[int, ...]:
    return (0, int(os.environ["TEST_REDIS_DB"]))


def redis_snapshot(client: redis.Redis) -> set[bytes]:
    """The database's keys, and the unacknowledged deliveries of a Redis broker."""
    return set(client.scan_iter(count=1000)) | {b"unacked:" + tag for tag in client.hkeys("unacked")}


@pytest.fixture(scope="session", autouse=True)
def leaves_redis_as_it_found_it():
    """Fail the run if it left keys or unacknowledged messages that a later `make dev` would meet."""
    clients = {
        db: redis.Redis(*REDIS, db=db, socket_timeout=10, socket_connect_timeout=2) for db in watched_redis_databases()
    }
    try:
        before = {db: redis_snapshot(client) for db, client in clients.items()}
    except redis.ConnectionError:
        before = None  # no Redis: the tests that need it say so
    yield
    if before is None:
        return
    left = {db: sorted(redis_snapshot(client) - before[db])[:20] for db, client in clients.items()}
    left = {db: keys for db, keys in left.items() if keys}
    assert not left, (
        f"the template's tests left these in Redis on port {REDIS[1]} (database: keys): {left}. "
        "(A make dev running on that Redis writes there too: give the tests another REDIS_PORT.)"
    )


@pytest.fixture(scope="session")
def services():
    """Postgres, Redis and RabbitMQ on this machine. Missing: fail in CI, skip elsewhere."""
    wanted = (("Postgres", POSTGRES), ("Redis", REDIS), ("RabbitMQ", RABBITMQ))
    absent = [name for name, address in wanted if not reachable(address)]
    if absent:
        missing(f"{' and '.join(absent)} not reachable on 127.0.0.1 (./scripts/test starts them when installed)")
    return {"postgres": POSTGRES, "redis": REDIS, "rabbitmq": RABBITMQ}


@dataclass(frozen=True)
class Baked:
    path: Path
    context: dict


@pytest.fixture(scope="session", params=MATRIX, ids=matrix_id)
def baked(request, cookies_session) -> Baked:
    """A project baked with one combination of options (once per session)."""
    result = cookies_session.bake(extra_context=request.param)
    assert result.exit_code == 0, result.exception
    return Baked(result.project_path, result.context)
