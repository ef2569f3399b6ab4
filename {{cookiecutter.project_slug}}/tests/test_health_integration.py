"""Health endpoints and the compose healthcheck commands, against real processes."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.celery_app import app
from config.healthcheck import heartbeat_file

from .conftest import ROOT, _missing, _test_database_url, free_port, start_process, stop_processes, wait_for

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


def probe(process: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "config.healthcheck", process]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def healthcheck(process: str, env: dict) -> int:
    return probe(process, env).returncode


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


@pytest.mark.django_db(transaction=True)
def test_a_pool_waiting_for_its_broker_passes_its_probe_and_recovers(throwaway_redis, tmp_path):
    """Kubernetes restarts a container whose liveness probe fails: in a broker outage that only adds back-off.

    A worker's main loop stops while it reconnects to the broker, so its heartbeat goes
    stale. The probe then tries the broker's port: refused, the probe passes.
    """
    url = f"redis://127.0.0.1:{throwaway_redis.port}/0"
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": url,
        "REDIS_URL": url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_WORKER_AUTORELOAD": "0",
        "HEALTHCHECK_DIR": str(tmp_path),
        "WORKER_HIGH_CONCURRENCY": "1",
        "WORKER_NODE_PREFIX": f"test-{os.getpid()}-outage-",  # never the session pools' node names
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    probed = env | {"HEALTHCHECK_MAX_AGE": "15"}  # touched every 10 s
    beats = heartbeat_file("worker-high").name

    def age() -> float:
        path = tmp_path / beats
        return time.time() - path.stat().st_mtime if path.exists() else float("inf")

    worker = start_process("worker-high", env, tmp_path / "worker.log")
    try:
        wait_for(lambda: age() < 15, timeout=90, message="the worker's first heartbeat")
        assert probe("worker-high", probed).returncode == 0

        throwaway_redis.stop()
        wait_for(lambda: age() > 16, timeout=60, message="the heartbeat to go stale while the broker is down")
        outage = probe("worker-high", probed)
        assert outage.returncode == 0, outage.stdout
        assert f"127.0.0.1:{throwaway_redis.port}) refuses connections" in outage.stdout
        # The same stale heartbeat with a broker that answers: a hung worker, restart it.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            answering = probed | {"CELERY_BROKER_URL": f"redis://127.0.0.1:{listener.getsockname()[1]}/0"}
            assert probe("worker-high", answering).returncode == 1

        throwaway_redis.start()  # same port: the worker reconnects and its loop goes on
        wait_for(lambda: age() < 11, timeout=90, message="a fresh heartbeat after the broker came back")
        assert probe("worker-high", probed).stdout.strip() == "healthy"
    finally:
        stop_processes([worker])
        log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Connected to redis://" in log
