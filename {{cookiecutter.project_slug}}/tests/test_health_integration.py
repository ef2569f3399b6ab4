"""Health endpoints and the compose healthcheck commands, against real processes."""

import shutil
import socket
import subprocess
import sys
import time

import pytest

from config.celery_app import app

from .conftest import ROOT, _missing, free_port

pytestmark = pytest.mark.integration


class ThrowawayRedis:
    """A Redis of our own on another port, to stop and start at will."""

    def __init__(self):
        self.port = free_port()
        self.process = None

    def start(self):
        command = [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("throwaway redis did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def throwaway_redis(monkeypatch):
    if not shutil.which("redis-server"):
        _missing("redis-server is not installed: cannot start a throwaway Redis")
    redis = ThrowawayRedis()
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    monkeypatch.setitem(app.conf, "broker_url", url)
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the variable before its config
    yield redis
    if redis.process.poll() is None:
        redis.stop()


def test_liveness_needs_nothing(client):
    response = client.get("/healthz", HTTP_HOST="10.0.0.7")  # any host: probes don't know the domain
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readiness_follows_the_broker(db, client, throwaway_redis):
    assert client.get("/readyz").json() == {"database": "ok", "broker": "ok"}

    throwaway_redis.stop()
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (503, {"database": "ok", "broker": "unavailable"})

    throwaway_redis.start()  # same port: back
    assert client.get("/readyz").status_code == 200


def healthcheck(process: str, env: dict) -> int:
    command = [sys.executable, "-m", "config.healthcheck", process]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=False).returncode


def test_worker_healthchecks_pass_while_running_and_fail_when_stopped(worker_pools):
    import signal

    for name in worker_pools.processes:
        assert healthcheck(name, worker_pools.env) == 0, name

    worker_pools.kill("worker-export", signal.SIGTERM)
    try:
        assert healthcheck("worker-export", worker_pools.env) == 1
        # A hung worker: the file exists but has not been touched for too long.
        stale = worker_pools.env | {"HEALTHCHECK_MAX_AGE": "0"}
        time.sleep(0.1)
        assert healthcheck("worker-high", stale) == 1
    finally:
        worker_pools.restart("worker-export")
    assert healthcheck("worker-export", worker_pools.env) == 0


def test_healthcheck_rejects_unknown_processes(worker_pools):
    assert healthcheck("worker-reports", worker_pools.env) == 2
