"""web, beat and flower start natively from their Procfile lines (as ``make dev`` runs them)."""

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .conftest import ROOT, free_port, start_process, stop_processes, wait_for

pytestmark = pytest.mark.integration


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """(status, body); status 0 while nothing listens yet."""
    request = urllib.request.Request(url)  # noqa: S310 (a localhost URL built by the test)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:  # connection refused: the process is still starting
        return 0, ""


@pytest.fixture
def native(worker_pools, tmp_path):
    """Start web, beat and flower next to the worker pools; stop them afterwards."""
    web_port, flower_port = free_port(), free_port()
    env = worker_pools.env | {
        "PORT": str(web_port),
        "FLOWER_PORT": str(flower_port),
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_BASIC_AUTH": "operator:s3cret",
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "beat", "flower")}
    processes = {name: start_process(name, env, log) for name, log in logs.items()}
    yield {"web": f"http://127.0.0.1:{web_port}", "flower": f"http://127.0.0.1:{flower_port}", "logs": logs,
           "processes": processes, "env": env}  # fmt: skip
    stop_processes(processes.values())


def test_web_serves_the_home_page(native):
    def home():
        response = get(native["web"] + "/")
        return response if response[0] else None

    status, body = wait_for(home, message="the home page")
    assert status == 200
    assert "worker-export" in body


def test_flower_requires_auth_and_sees_every_pool(native, worker_pools):
    assert wait_for(lambda: get(native["flower"] + "/api/workers")[0], message="flower to answer") == 401

    def workers():
        status, body = get(native["flower"] + "/api/workers?refresh=1", auth=("operator", "s3cret"))
        names = set(json.loads(body)) if status == 200 else set()
        return names if names >= expected else None

    expected = {worker_pools.hostname(name) for name in worker_pools.processes}
    assert wait_for(workers, message="flower to list all three pools") >= expected
    # Flower's own /metrics lists task and worker names: behind the same auth (config/flower.py).
    assert get(native["flower"] + "/metrics")[0] == 401
    assert get(native["flower"] + "/metrics", auth=("operator", "s3cret"))[0] == 200
    assert get(native["flower"] + "/healthcheck")[0] == 200  # "OK" and nothing else, for probes


def test_flower_turns_the_workers_task_events_on(native, live_celery):
    """Workers start without task events (CELERY_WORKER_SEND_TASK_EVENTS is off by
    default: they cost every task); Flower enables them, so its task pages still work."""
    from {{ cookiecutter.project_slug }}.core.tasks import probe_queue_latency

    sent = set()

    def flower_saw_a_task():
        sent.add(probe_queue_latency.apply_async(("high", time.time()), queue="high", ignore_result=True).id)
        status, body = get(native["flower"] + "/api/tasks", auth=("operator", "s3cret"))
        if status != 200:
            return None
        # A task whose events began arriving only after Flower switched them on (its
        # task-received went out before) is listed without a name: wait for a whole one.
        tasks = json.loads(body)
        return [task_id for task_id in sent & set(tasks) if tasks[task_id].get("name")]

    seen = wait_for(flower_saw_a_task, interval=1, message="Flower to show a task the high pool ran")
    task = json.loads(get(native["flower"] + "/api/task/info/" + seen.pop(), auth=("operator", "s3cret"))[1])
    assert task["name"].endswith("core.tasks.probe_queue_latency")
    assert task["worker"] == live_celery.hostname("worker-high")


def test_beat_starts_with_the_database_scheduler(native):
    beat_log = native["logs"]["beat"]
    wait_for(lambda: "DatabaseScheduler" in beat_log.read_text(errors="replace"), message="beat to start")
    time.sleep(2)
    assert native["processes"]["beat"].poll() is None, native["logs"]["beat"].read_text()

    wait_for(lambda: run_healthcheck("beat", native["env"]) == 0, message="beat's healthcheck to pass")


def test_web_healthcheck_command(native):
    wait_for(lambda: run_healthcheck("web", native["env"]) == 0, message="the web healthcheck to pass")


def test_flower_healthcheck_command(native):
    wait_for(lambda: run_healthcheck("flower", native["env"]) == 0, message="the flower healthcheck to pass")
    nobody_there = native["env"] | {"FLOWER_PORT": str(free_port())}
    assert run_healthcheck("flower", nobody_there) == 1


def run_healthcheck(process: str, env: dict) -> int:
    command = [sys.executable, "-m", "config.healthcheck", process]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=False).returncode
