"""The Kubernetes manifests: generated from the topology, valid, and doing what they say.

Without a cluster: every object of k8s/base/ and of the rendered production overlay is
validated against Kubernetes' own OpenAPI schemas (kubernetes-validate), and every KEDA
object against the CRD schema of the KEDA release in tests/keda/. The overlay is rendered
with `kubectl kustomize` (or a standalone `kustomize build`).
"""

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml
from django.conf import settings
from django.db import connection

from config import kubernetes, topology
from config.celery_app import app as celery_app
from tests.conftest import _test_database_url

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "k8s" / "overlays" / "production"
KEDA_CRDS = Path(__file__).resolve().parent / "keda"
# The oldest Kubernetes release still maintained when this was written, and the newest
# the schemas know: a field one of them lacks fails here, not at `kubectl apply`.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def load_all(text: str) -> list[dict]:
    return [item for item in yaml.safe_load_all(text) if item]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    """Every object k8s/base/ holds (its kustomization files aside)."""
    objects = []
    for path in sorted((ROOT / "k8s" / "base").glob("*.yaml")):
        if not path.name.startswith("kustomiz"):
            objects += load_all(path.read_text())
    return objects


def named(objects: list[dict], kind: str) -> dict[str, dict]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


# --- generated, and in step with the topology ----------------------------------------


def test_the_committed_manifests_are_what_the_topology_renders():
    assert kubernetes.stale() == [], "run: python -m config.kubernetes"


def test_a_topology_change_is_caught_until_the_manifests_are_regenerated(monkeypatch, tmp_path, capsys):
    shutil.copytree(ROOT / "k8s" / "base", tmp_path / "base")
    export = topology.pool_named("worker-export")
    busier = dataclasses.replace(export, max_replicas=export.max_replicas + 3)
    monkeypatch.setattr(kubernetes, "POOLS", tuple(busier if p is export else p for p in topology.POOLS))
    monkeypatch.setattr(kubernetes, "BASE", tmp_path / "base")

    assert kubernetes.stale() == ["autoscaling.yaml"]
    assert kubernetes.main(["--check"]) == 1
    assert "k8s/base/autoscaling.yaml disagrees with config/topology.py" in capsys.readouterr().err

    kubernetes.main([])
    assert kubernetes.stale() == []
    scaled = named(load_all((tmp_path / "base" / "autoscaling.yaml").read_text()), "ScaledObject")
    assert scaled["worker-export"]["spec"]["maxReplicaCount"] == export.max_replicas + 3


# --- valid for the API server --------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(base, version):
    checked = 0
    for item in base:
        if item["kind"] not in KEDA_KINDS:
            # strict: an unknown field (a typo such as perodSeconds) fails too.
            kubernetes_validate.validate(item, version, strict=True)
            checked += 1
    assert checked >= len(topology.POOLS) + 5  # pools, web and its Service, beat, relay, flower, migrate


def keda_schema(kind: str) -> dict:
    crd = yaml.safe_load((KEDA_CRDS / f"keda.sh_{kind.lower()}s.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def test_every_keda_object_is_valid_for_its_crd(base):
    keda = [item for item in base if item["kind"] in KEDA_KINDS]
    assert {item["kind"] for item in keda} == KEDA_KINDS
    for item in keda:
        jsonschema.validate(item, keda_schema(item["kind"]))


@pytest.mark.parametrize(
    "spoil",
    [
        lambda spec: spec.pop("scaleTargetRef"),
        lambda spec: spec.update(minReplicaCount="one"),
        lambda spec: spec["triggers"][0].pop("metadata"),
        lambda spec: spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].update(
            policies=[{"type": "Pods", "value": 1}]
        ),
    ],
)
def test_the_crd_schema_rejects_a_broken_scaled_object(base, spoil):
    broken = copy.deepcopy(named(base, "ScaledObject")["worker-high"])
    spoil(broken["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, keda_schema("ScaledObject"))


# --- what each object promises -------------------------------------------------------


def test_each_pool_runs_as_its_profile_says(base):
    deployments = named(base, "Deployment")
    for pool in topology.POOLS:
        deployment = deployments[pool.name]
        (worker,) = pod(deployment)["containers"]
        assert worker["command"] == ["python", "-m", "config.worker", pool.name]
        # KEDA owns the count: a replicas field would be reset by every apply.
        assert "replicas" not in deployment["spec"]
        # Soft shutdown first, then the time to hand messages back, then SIGKILL.
        assert pod(deployment)["terminationGracePeriodSeconds"] > pool.soft_shutdown_timeout
        # Room for the main process and every child at its max_memory_per_child.
        limit = int(worker["resources"]["limits"]["memory"].removesuffix("Mi"))
        assert limit * 1024 > pool.concurrency * pool.max_memory_per_child
        assert worker["resources"]["requests"]["memory"] == worker["resources"]["limits"]["memory"]
        # Alive while its heartbeat file is fresh; no traffic, so no readiness.
        probe = ["python", "-m", "config.healthcheck", pool.name]
        assert worker["livenessProbe"]["exec"]["command"] == probe
        assert worker["startupProbe"]["exec"]["command"] == probe
        assert "readinessProbe" not in worker


def test_each_pool_scales_with_its_own_queues_on_the_baked_broker(base):
    scaled = named(base, "ScaledObject")
    assert set(scaled) == {pool.name for pool in topology.POOLS}  # beat, web: never autoscaled
    for pool in topology.POOLS:
        spec = scaled[pool.name]["spec"]
        assert spec["scaleTargetRef"]["name"] == pool.name
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (pool.min_replicas, pool.max_replicas)
        queues = []
        for trigger in spec["triggers"]:
            assert trigger["authenticationRef"]["name"] == "celery-broker"
            if kubernetes.BROKER == "rabbitmq":
                assert trigger["type"] == "rabbitmq"
                assert trigger["metadata"]["mode"] == "QueueLength"
                queues.append(trigger["metadata"]["queueName"])
            else:
                assert trigger["type"] == "redis"
                queues.append(trigger["metadata"]["listName"])
        assert queues == list(pool.queues)
    # A password reset never waits for a pod to start; an export may.
    assert scaled["worker-high"]["spec"]["minReplicaCount"] >= 1
    assert scaled["worker-export"]["spec"]["minReplicaCount"] == 0


def test_beat_never_runs_twice(base):
    beat = named(base, "Deployment")["beat"]
    assert beat["spec"]["replicas"] == 1
    # Recreate: the old pod is gone before the new one starts (a rolling update overlaps).
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_no_process_starts_before_the_migrations_are_in(base):
    for name, deployment in named(base, "Deployment").items():
        (wait,) = pod(deployment)["initContainers"]
        assert "manage.py migrate --check" in wait["command"][-1], name
    job = named(base, "Job")["migrate"]
    (migrate,) = pod(job)["containers"]
    assert 'DATABASE_URL="$DATABASE_DIRECT_URL"' in migrate["command"][-1]
    assert migrate["command"][-1].endswith("python manage.py migrate --noinput")


def test_web_is_ready_without_the_broker_and_flower_stays_inside(base):
    deployments, services = named(base, "Deployment"), named(base, "Service")
    (web,) = pod(deployments["web"])["containers"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"  # /readyz fails while the broker is down
    assert services["flower"]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert set(services) == {"web", "flower"}


def test_every_pod_runs_as_the_images_user_without_privileges(base):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--uid {kubernetes.APP_UID}" in dockerfile
    for name, workload in [*named(base, "Deployment").items(), *named(base, "Job").items()]:
        spec = pod(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == kubernetes.APP_UID
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


# --- the production overlay, rendered --------------------------------------------------


def kustomize() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if os.environ.get("CI"):
        pytest.fail("CI: neither kubectl nor kustomize is on PATH (the overlay test needs one)")
    pytest.skip("needs kubectl (or kustomize) on PATH")
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """`kubectl kustomize k8s/overlays/production`, on a copy that has a secrets.env."""
    command = kustomize()
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "k8s", copy_root)
    secrets = copy_root / "overlays" / "production" / "secrets.env"
    if not secrets.exists():  # git-ignored: a fresh clone has the example only
        shutil.copyfile(secrets.with_name("secrets.env.example"), secrets)
    result = subprocess.run(
        [*command, str(copy_root / "overlays" / "production")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_production_overlay_renders_valid_objects(rendered, version):
    kinds = {item["kind"] for item in rendered}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Job", "ScaledObject"} <= kinds
    for item in rendered:
        if item["kind"] in KEDA_KINDS:
            jsonschema.validate(item, keda_schema(item["kind"]))
        else:
            kubernetes_validate.validate(item, version, strict=True)


def test_the_overlay_wires_every_reference_to_what_it_generates(rendered):
    (secret,) = named(rendered, "Secret")
    (config,) = named(rendered, "ConfigMap")
    (namespace,) = named(rendered, "Namespace")
    # Content hashes in the names: a changed variable rolls every pod that reads it.
    assert secret.startswith("django-secrets-")
    assert config.startswith("django-config-")
    for item in rendered:
        if item["kind"] != "Namespace":
            assert item["metadata"]["namespace"] == namespace
    for name, workload in [*named(rendered, "Deployment").items(), *named(rendered, "Job").items()]:
        for container in pod(workload)["containers"] + pod(workload).get("initContainers", []):
            assert container["envFrom"] == [{"configMapRef": {"name": config}}, {"secretRef": {"name": secret}}]
            assert container["image"].startswith("registry.example.com/"), name
    # KEDA's Secret reference is renamed too (k8s/base/kustomizeconfig.yaml).
    (auth,) = named(rendered, "TriggerAuthentication").values()
    assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {secret}
    secret_keys = set(named(rendered, "Secret")[secret]["data"])
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= secret_keys


# --- k8s/deploy.sh, against a kubectl that records what it is asked -------------------

FAKE_KUBECTL = """#!/bin/sh
echo "$*" >> "$KUBECTL_LOG"
if [ "$1" = kustomize ]; then echo "kind: Namespace"; fi
"""


def test_deploy_runs_the_migrate_job_before_the_rollout(tmp_path):
    (tmp_path / "kubectl").write_text(FAKE_KUBECTL)
    (tmp_path / "kubectl").chmod(0o755)
    log = tmp_path / "calls"
    env = os.environ | {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "KUBECTL_LOG": str(log)}
    subprocess.run(["/bin/sh", "k8s/deploy.sh"], cwd=ROOT, env=env, check=True, capture_output=True)
    verbs = [line.split()[0] for line in log.read_text().splitlines()]
    assert verbs == ["kustomize", "delete", "apply", "wait", "rollout"]
    calls = log.read_text().splitlines()
    assert calls[0] == "kustomize k8s/overlays/production"
    assert "--selector=app.kubernetes.io/name=migrate" in calls[1]
    assert "--ignore-not-found" in calls[1]
    assert "--for=condition=complete" in calls[3]
    assert "app.kubernetes.io/name=migrate" in calls[3]


def test_deploy_stops_when_the_migrations_fail(tmp_path):
    failing = FAKE_KUBECTL + 'if [ "$1" = wait ]; then exit 1; fi\n'
    (tmp_path / "kubectl").write_text(failing)
    (tmp_path / "kubectl").chmod(0o755)
    log = tmp_path / "calls"
    env = os.environ | {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "KUBECTL_LOG": str(log)}
    result = subprocess.run(["/bin/sh", "k8s/deploy.sh"], cwd=ROOT, env=env, check=False, capture_output=True)
    assert result.returncode != 0
    assert [line.split()[0] for line in log.read_text().splitlines()][-1] == "wait"  # no rollout status


# --- what the manifests name exists where they say ------------------------------------


@contextmanager
def broker_nobody_consumes(broker_url: str):
    """The run's broker, but a namespace no worker pool of this run reads from."""
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        taken = client.info("keyspace")
        db = next(db for db in range(14, 0, -1) if f"db{db}" not in taken)
        url = urlunsplit(urlsplit(broker_url)._replace(path=f"/{db}"))
        try:
            yield url
        finally:
            redis.Redis.from_url(url).flushdb()
    else:
        from tests.rabbitmq import throwaway_vhost

        with throwaway_vhost(broker_url) as url:
            yield url


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")  # send_task always sends
def test_each_trigger_reads_the_queue_its_pools_tasks_wait_in(base, broker_url):
    """Messages sent to a queue are what the pool's trigger counts (what KEDA will read)."""
    declared = {queue.name: queue for queue in settings.CELERY_TASK_QUEUES}
    triggers = [trigger for item in named(base, "ScaledObject").values() for trigger in item["spec"]["triggers"]]
    with broker_nobody_consumes(broker_url) as url, celery_app.connection_for_write(url) as conn:
        for waiting, trigger in enumerate(triggers, start=1):
            queue = trigger["metadata"].get("listName") or trigger["metadata"]["queueName"]
            for _ in range(waiting):  # a different count per queue: no two can be confused
                celery_app.send_task("kubernetes.probe", queue=declared[queue], connection=conn)
        channel = conn.default_channel
        for waiting, trigger in enumerate(triggers, start=1):
            metadata = trigger["metadata"]
            if trigger["type"] == "redis":  # KEDA: LLEN listName
                assert channel.client.llen(metadata["listName"]) == waiting, metadata
            else:  # KEDA: the queue's message count
                assert channel.queue_declare(metadata["queueName"], passive=True).message_count == waiting


def test_keda_reads_the_broker_celery_uses():
    """The example Secret's KEDA variables point at the broker of its Celery variables."""
    lines = (OVERLAY / "secrets.env.example").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    triggers = [trigger for item in load_all((ROOT / "k8s" / "base" / "autoscaling.yaml").read_text())
                for trigger in item.get("spec", {}).get("triggers", [])]  # fmt: skip
    if kubernetes.BROKER == "redis":
        broker = urlsplit(env["REDIS_URL"])  # CELERY_BROKER_URL's default (config/settings/base.py)
        assert env["KEDA_REDIS_ADDRESS"] == f"{broker.hostname}:{broker.port}"
        assert {trigger["metadata"]["databaseIndex"] for trigger in triggers} == {broker.path.strip("/")}
    else:
        broker, keda = urlsplit(env["CELERY_BROKER_URL"]), urlsplit(env["KEDA_RABBITMQ_URL"])
        assert (keda.username, keda.password, keda.hostname) == (broker.username, broker.password, broker.hostname)
        assert keda.path.rsplit("/", 1)[-1] == broker.path.strip("/")  # the virtual host
        assert {trigger["metadata"]["protocol"] for trigger in triggers} == {"http"}


# --- migrations before the rollout, with the manifests' own commands ------------------


def start_manifest_command(container: dict, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        container["command"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.integration
@pytest.mark.django_db
def test_pods_wait_in_their_init_container_until_the_migrate_job_has_run(base):
    if connection.vendor != "postgresql":
        pytest.skip("needs Postgres")
    db = connection.settings_dict
    name = f"{db['NAME']}_k8s_migrate"
    admin = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"] or None,
        dbname="postgres", autocommit=True,
    )  # fmt: skip
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(_test_database_url())._replace(path=f"/{name}"))
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": url,
        "DATABASE_DIRECT_URL": url,
    }
    (wait,) = pod(named(base, "Deployment")["worker-high"])["initContainers"]
    (migrate,) = pod(named(base, "Job")["migrate"])["containers"]
    waiting = start_manifest_command(wait, env)
    try:
        time.sleep(8)  # an empty database: the init container keeps waiting
        assert waiting.poll() is None, waiting.stdout.read()
        job = subprocess.run(migrate["command"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert job.returncode == 0, job.stdout + job.stderr
        assert waiting.wait(timeout=60) == 0  # the pod's containers may start now
        assert "waiting for the migrate Job" in waiting.stdout.read()
    finally:
        if waiting.poll() is None:
            waiting.kill()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
