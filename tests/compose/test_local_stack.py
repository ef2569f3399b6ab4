"""`docker compose up` of the local stack, for real, as the baked README tells a user.

For the default bake and a RabbitMQ bake: every service healthy, migrate ran once
before any other Django service, the published ports answer, each example task runs
in its own pool's container, an export survives a code reload and a `docker compose
stop` of its worker (handed back, resumed, byte-identical), the containers write into
the source tree as its owner, the pools scale out across containers, and Prometheus
scrapes /metrics with the env file's credentials.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..conftest import DEMO_LOGIN, sign_in
from .conftest import BAKER_UID, make_stack
from .prometheus import check_prometheus
from .stack import Stack, wait_until

FILES = ["docker-compose.yml"]
DJANGO_SERVICES = {"django", "worker-high", "worker-default", "worker-export", "beat", "flower", "outbox-relay"}
# What `docker compose up` starts: Prometheus only with its profile (monitoring).
SERVICES = DJANGO_SERVICES | {"postgres", "redis"}
# A slow export, so that it can be reloaded and stopped part-way: 100 batches of 2,000
# rows, 0.2 s each. Only the env file changes; the compose file is tested as baked.
EXPORT_ROWS = 200_000
SLOW_EXPORTS = "\n# compose suite: slow exports down\nEXPORT_BATCH_SIZE=2000\nEXPORT_THROTTLE_SECONDS=0.2\n"


def get(url: str, auth: tuple[str, str] | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def hostname(stack: Stack, service: str) -> str:
    (container,) = stack.containers(service)
    return container["Config"]["Hostname"]


@pytest.fixture(scope="module", params=[{}, {"project_name": "Rabbit Shop", "broker": "rabbitmq"}],
                ids=["redis", "rabbitmq"])  # fmt: skip
def local_stack(request, docker_ready, tmp_path_factory):
    stack = make_stack(tmp_path_factory, FILES, **request.param)
    with (stack.path / ".envs/.local/.django").open("a") as handle:
        handle.write(SLOW_EXPORTS)
    with stack.started(seed_transactions=EXPORT_ROWS):
        yield stack


@pytest.fixture
def stack(local_stack) -> Stack:
    """The module's stack, as a per-test fixture (so that a failure attaches its logs)."""
    return local_stack


def test_every_service_is_healthy_and_migrate_ran_first(stack):
    containers = stack.containers(all_states=True)
    by_service = {}
    for container in containers:
        by_service.setdefault(stack.service_of(container), []).append(container)

    (migrate,) = by_service.pop("migrate")  # exactly one run
    assert migrate["State"]["Status"] == "exited" and migrate["State"]["ExitCode"] == 0
    for service, (container,) in by_service.items():
        state = container["State"]
        assert state["Status"] == "running", service
        assert state["Health"]["Status"] == "healthy", service  # every service has a healthcheck
        assert container["RestartCount"] == 0, service
        if service in DJANGO_SERVICES:
            assert state["StartedAt"] > migrate["State"]["FinishedAt"], f"{service} started before migrate finished"
    assert SERVICES <= by_service.keys()
    assert "prometheus" not in by_service  # not needed to use the site: --profile monitoring


def test_first_run_prints_a_demo_login_that_works(stack):
    """The first `up` seeds the demo account and prints its login; that login signs in."""
    log = stack.compose("logs", "--no-color", "migrate").stdout
    found = DEMO_LOGIN.search(log)
    assert found, log[-2000:]
    url, username, password = found.groups()
    assert url == f"http://localhost:{stack.env['PORT']}/accounts/login/"
    assert sign_in(url.replace("localhost", "127.0.0.1"), username, password)


def test_published_ports_answer(stack):
    web = f"http://127.0.0.1:{stack.env['PORT']}"
    assert get(web + "/healthz")[0] == 200
    status, body = get(web + "/readyz")
    assert status == 200, body

    flower = f"http://127.0.0.1:{stack.env['FLOWER_PORT']}"
    user, password = env_file(stack.path / ".envs/.local/.django")["FLOWER_BASIC_AUTH"].split(":", 1)
    assert get(flower + "/")[0] == 401
    assert get(flower + "/", auth=(user, password))[0] == 200
    assert get(flower + "/", auth=(user, "wrong"))[0] == 401


def test_prometheus_scrapes_the_web_with_the_env_files_credentials(stack):
    """compose/prometheus/: the django target is up (basic auth from .envs/.local/.metrics),
    every queue's SLA is stored, and the alert rules are loaded and evaluate. Started the
    way the baked README says, with its profile, beside the running stack."""
    stack.compose("--profile", "monitoring", "up", "--detach", "--wait", "prometheus", timeout=600)
    prometheus = f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"

    def fetch(path: str) -> dict:
        status, body = get(prometheus + path)
        assert status == 200, body
        return json.loads(body)

    check_prometheus(fetch)


def test_each_task_runs_in_its_pools_container(stack):
    payment = stack.action("pay-one")
    assert payment["result"] == "paid"
    assert payment["worker"] == f"high@{hostname(stack, 'worker-high')}"

    export = stack.action("export-now")
    assert export["result"] == "completed"
    assert (export["queue"], export["worker"]) == ("export", f"export@{hostname(stack, 'worker-export')}")


def test_export_survives_a_reload_and_a_stop_of_its_worker(stack):
    job = stack.action("export-start")["job"]

    def status():
        return stack.action("export-status", job=job)

    wait_until(lambda: status()["processed_rows"] >= EXPORT_ROWS * 0.2, 120, "20% of the export")
    # A code change: the reloader soft-stops the worker and starts it again.
    probe = stack.path / "autoreload_probe.py"
    probe.write_text("# a code change\n")
    os.chown(probe, BAKER_UID, BAKER_UID) if os.geteuid() == 0 else None
    resumed = wait_until(
        lambda: len((s := status())["runners"]) >= 2 and s, 120, "the export resumed by the reloaded worker"
    )
    probe.unlink()
    # The reloaded worker makes progress (one tenth more), then is stopped well before
    # the end: the export pool's soft shutdown gives a running task 5 s, and at this
    # point half the export or more (10 s or more of throttled batches) is still to go,
    # so the stop must interrupt it. (Stopping at a fixed 60% once let a fast run
    # finish inside those 5 s.)
    progressed = resumed["processed_rows"] + EXPORT_ROWS // 10
    wait_until(lambda: status()["processed_rows"] >= progressed, 120, "the resumed export's progress")

    stack.compose("stop", "worker-export")  # SIGTERM to the reloader, then the worker's soft shutdown
    stopped = status()
    assert stopped["status"] == "running"
    assert stopped["lease_owner"] == "", "the stopped worker kept its lease: the job was not handed back"
    assert stopped["processed_rows"] < EXPORT_ROWS

    stack.compose("start", "worker-export")
    done = wait_until(lambda: (s := status())["status"] == "completed" and s, 180, "the resumed export")
    assert len(done["runners"]) == 3  # one runner per start: resumed twice, never restarted
    assert done["sha256"] == stack.action("export-reference")["sha256"]  # one plain COPY of the same rows


def test_files_written_by_the_containers_belong_to_the_owner(stack):
    stack.exec("django", "python", "manage.py", "makemigrations", "exports", "--empty", "--name", "compose_probe")
    (migration,) = (stack.path).glob("*/exports/migrations/*_compose_probe.py")
    try:
        assert migration.stat().st_uid == stack.path.stat().st_uid
    finally:
        migration.unlink()
    owner = stack.path.stat().st_uid
    strangers = [path for path in stack.path.rglob("*") if path.lstat().st_uid != owner]
    assert not strangers, f"not owned by the project's owner (uid {owner}): {strangers[:10]}"
    assert (stack.path / "media").is_dir()  # the exports above went to ./media, as the owner


def test_pools_scale_out_across_containers(stack):
    stack.up("--scale", "worker-export=3", "--scale", "worker-high=2")
    exporters = {container["Config"]["Hostname"] for container in stack.containers("worker-export")}
    assert len(exporters) == 3
    assert all(c["State"]["Health"]["Status"] == "healthy" for c in stack.containers("worker-export"))
    expected = {f"export@{name}" for name in exporters} | {
        f"high@{c['Config']['Hostname']}" for c in stack.containers("worker-high")
    }
    wait_until(lambda: expected <= set(stack.action("ping")["workers"]), 60, "every replica to answer a ping")

    # Three slow exports at once: with one process and prefetch 1 per container, each
    # container can hold only one, so all three replicas must work.
    # (Each takes 20 s or more here: 100 throttled batches. The generous limit is for a
    # busy CI machine; on a timeout the action says where each export stood.)
    runs = stack.action("exports-parallel", count=3, timeout=300)["runs"]
    assert {run["result"] for run in runs} == {"completed"}
    assert {run["worker"] for run in runs} == {f"export@{name}" for name in exporters}
    stack.up("--scale", "worker-export=1", "--scale", "worker-high=1")


def test_images_belong_to_their_project_and_never_run_as_root(stack):
    """Another compose project in the same checkout builds its own image, beside the
    stack's; given uid 0 (a checkout owned by root, `make up` as root), the development
    image keeps its own unprivileged user."""
    other = f"{stack.name}_second"
    own, theirs = f"{stack.name}_local_django", f"{other}_local_django"

    def ids(image: str) -> tuple[str, str]:
        command = ["docker", "run", "--rm", "--entrypoint", "id", image]
        return tuple(
            subprocess.run([*command, flag], capture_output=True, text=True, check=True).stdout.strip()
            for flag in ("-u", "-g")
        )

    as_root = Stack(stack.path, stack.files, stack.env | {"APP_UID": "0", "APP_GID": "0"})
    try:
        as_root.compose("-p", other, "build", "django")
        assert ids(theirs) == ("10001", "10001")
        assert ids(own) == (str(BAKER_UID), str(BAKER_UID))  # the running stack's image is untouched
    finally:
        subprocess.run(["docker", "image", "rm", "--force", theirs], capture_output=True, check=False)
