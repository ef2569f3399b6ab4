"""The test run's own Redis database: checked before the first test, emptied after the last.

``config/settings/test.py`` sends everything the tests write to Redis (queues,
results, metrics, the sandbox provider's keys) to database ``TEST_REDIS_DB`` on
REDIS_URL's server, never to the database ``make dev`` uses. This plugin (the root
conftest.py loads it), before the first test:

* refuses a database holding keys that no test run wrote (someone else's data), or
  one another test run on this machine is using right now;
* marks the database as this run's (``OWNER_KEY``);
* rewrites CELERY_BROKER_URL and CELERY_RESULT_BACKEND when the environment sets
  them (Celery reads them before its settings) to name the test database too.

After the last test it empties the database: a test run leaves nothing behind.
"""

import os
import socket
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings

OWNER_KEY = "test-suite:owner"


def _database(url: str) -> tuple:
    """Where a Redis URL points: server (host and port, or socket) and database number."""
    options = redis.connection.parse_url(url)
    return options.get("host", "localhost"), options.get("port", 6379), options.get("path"), options.get("db", 0)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(client: redis.Redis, where: str) -> None:
    """Make the database this run's, or fail the run without touching it."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    if owner := client.get(OWNER_KEY):
        host, _, pid = owner.decode().partition(":")
        if host == socket.gethostname() and pid.isdigit() and _running(int(pid)):
            pytest.exit(f"another test run (pid {pid}) is using {where}: wait for it, or set TEST_REDIS_DB", 1)
        client.flushdb()  # what an interrupted run left behind: the suite's own keys
    elif client.dbsize():
        pytest.exit(
            f"{where} holds keys that no test run wrote, so the tests will not use it: "
            "set TEST_REDIS_DB to the number of an empty database",
            1,
        )
    if not client.set(OWNER_KEY, me, nx=True):
        pytest.exit(f"another test run claimed {where} at the same moment: set TEST_REDIS_DB", 1)


@pytest.fixture(scope="session", autouse=True)
def redis_test_database():
    """Point the whole run at its own Redis database; empty it at the end."""
    url = settings.REDIS_URL
    host, port, path, db = _database(url)
    where = f"Redis database {db} on {path or f'{host}:{port}'}"
    if _database(settings.DEVELOPMENT_REDIS_URL) == (host, port, path, db):
        pytest.exit(f"TEST_REDIS_DB={db} is the database REDIS_URL points at (make dev's): choose another", 1)
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2)
    try:
        claim(client, where)
    except (redis.ConnectionError, redis.TimeoutError):
        client = None  # unreachable: the tests that need Redis say so (and fail in CI)
    with pytest.MonkeyPatch.context() as patch:
        # Celery prefers these variables to its settings: when the shell sets them,
        # they must name the test database too (here and in the processes tests start).
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            if name in os.environ and urlsplit(getattr(settings, name)).scheme in ("redis", "rediss", "unix"):
                patch.setenv(name, getattr(settings, name))
        yield url
    if client is not None:
        client.flushdb()
