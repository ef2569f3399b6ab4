"""The Procfile, both compose files and the topology describe the same processes.

A queue without a consumer, a second beat, or a compose worker that runs a
different command than the Procfile are all mistakes that only show up in
production; these tests make them fail in CI.
"""

import re
import shlex

import pytest
import yaml

from config import topology
from config.worker import build_command

from .conftest import ROOT, procfile

FIXED_PROCESSES = {"web", "worker-high", "worker-default", "worker-export", "beat", "flower"}
# Added beside the fixed ones: publishes the outbox rows the web process could not (docs/outbox.md).
EXTRA_PROCESSES = {"outbox-relay"}
# Services the Django processes need up (and healthy) before they start.
BACKING_SERVICES = {"postgres", "redis"{% if cookiecutter.broker == "rabbitmq" %}, "rabbitmq"{% endif %}}
FIXED_SERVICES = {"django", "worker-high", "worker-default", "worker-export", "beat", "flower"} | BACKING_SERVICES
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.production.yml"]


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())["services"]


def command(service: dict) -> str:
    value = service.get("command", "")
    return shlex.join(value) if isinstance(value, list) else value


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_procfile_names_the_fixed_processes():
    assert set(procfile()) == FIXED_PROCESSES | EXTRA_PROCESSES


def test_every_pool_has_a_procfile_line_that_starts_it():
    lines = procfile()
    for pool in topology.POOLS:
        assert lines[pool.name] == f"python -m config.worker {pool.name}"


def test_every_queue_is_consumed_by_a_pool():
    consumed = {queue for pool in topology.POOLS for queue in pool.queues}
    assert consumed == set(topology.QUEUES)


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_compose_has_the_fixed_services(filename):
    assert set(compose(filename)) >= FIXED_SERVICES | EXTRA_PROCESSES


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_compose_workers_beat_and_flower_run_the_procfile_commands(filename):
    services, lines = compose(filename), procfile()
    for name in (FIXED_PROCESSES | EXTRA_PROCESSES) - {"web"}:
        assert command(services[name]) == lines[name], f"{filename}: {name} differs from the Procfile"


def test_local_compose_web_matches_procfile():
    """The same server, bound where each runs it: the Procfile's on 127.0.0.1 (WEB_ADDRESS
    opens it), the container's on all of its interfaces, published on 127.0.0.1 only."""
    web = procfile()["web"]
    assert "${WEB_ADDRESS:-127.0.0.1}:" in web
    assert command(compose("docker-compose.yml")["django"]) == web.replace("${WEB_ADDRESS:-127.0.0.1}:", "0.0.0.0:")


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_exactly_one_beat(filename):
    beats = [name for name, service in compose(filename).items() if " beat" in command(service)]
    assert beats == ["beat"]


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_every_queue_has_a_compose_worker(filename):
    consumed = set()
    for service in compose(filename).values():
        match = re.fullmatch(r"python -m config\.worker (\S+)", command(service))
        if match:
            consumed.update(topology.pool_named(match.group(1)).queues)
    assert consumed == set(topology.QUEUES)


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_stop_grace_period_covers_the_soft_shutdown(filename):
    """Docker must not SIGKILL a worker while Celery's soft shutdown is still running."""
    services = compose(filename)
    for pool in topology.POOLS:
        grace = seconds(services[pool.name].get("stop_grace_period", "10s"))
        assert grace >= pool.soft_shutdown_timeout + 5, f"{filename}: {pool.name} grace {grace}s"


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_web_workers_beat_and_flower_have_cheap_healthchecks(filename):
    services = compose(filename)
    fixed = [("django", "web"), ("beat", "beat"), ("flower", "flower"), ("outbox-relay", "outbox-relay")]
    for name, process in [*fixed, *((pool.name, pool.name) for pool in topology.POOLS)]:
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "config.healthcheck", process], name


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_migrations_run_once_before_anything_uses_the_database(filename):
    services = compose(filename)
    migrators = [name for name, service in services.items() if "migrate" in command(service)]
    assert migrators == ["migrate"]
    for name in (FIXED_SERVICES | EXTRA_PROCESSES) - BACKING_SERVICES:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_django_processes_wait_for_healthy_backing_services(filename):
    services = compose(filename)
    for backing in BACKING_SERVICES:
        assert "healthcheck" in services[backing], backing
    for name in (FIXED_SERVICES | EXTRA_PROCESSES) - BACKING_SERVICES:
        for backing in BACKING_SERVICES:
            assert services[name]["depends_on"][backing]["condition"] == "service_healthy", (name, backing)


def test_production_processes_wait_for_pgbouncer_and_migrate_goes_direct():
    services = compose("docker-compose.production.yml")
    assert "healthcheck" in services["pgbouncer"]
    for name in (FIXED_SERVICES | EXTRA_PROCESSES) - BACKING_SERVICES:
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy", name
    # migrate: straight to Postgres (.envs/.production/.postgres, git-ignored, has both
    # URLs), and it need not wait for PgBouncer.
    assert "pgbouncer" not in services["migrate"]["depends_on"]
    assert 'DATABASE_URL="$$DATABASE_DIRECT_URL" DATABASE_TRANSACTION_POOLING=false' in command(services["migrate"])


def test_worker_command_is_built_from_the_topology():
    for pool in topology.POOLS:
        argv = build_command(pool.name, environ={})
        assert f"--queues={','.join(pool.queues)}" in argv
        assert f"--time-limit={pool.time_limit}" in argv
        assert f"--hostname={pool.node}@%h" in argv
        assert f"worker.soft_shutdown_timeout={pool.soft_shutdown_timeout}" in argv


def test_worker_node_names_can_be_prefixed():
    # The test suite's pools, so that they never answer for (or as) a running make dev.
    argv = build_command("worker-high", environ={"WORKER_NODE_PREFIX": "test-42-"})
    assert "--hostname=test-42-high@%h" in argv


def test_worker_concurrency_can_be_overridden_per_pool():
    argv = build_command("worker-high", environ={"WORKER_HIGH_CONCURRENCY": "2"})
    assert "--concurrency=2" in argv
