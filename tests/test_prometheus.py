"""The baked Prometheus files mean what they say: rules tested with promtool, the
configuration valid once completed, and every query names a series /metrics exports.

promtool comes from Debian's `prometheus` package (./scripts/test installs it when it
can). Without it these tests fail in CI and are skipped elsewhere, with that advice.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import missing
from .metrics_contract import ALERTS, FAMILIES, SERIES, series_in


@pytest.fixture(scope="module")
def project(cookies_session) -> Path:
    """One default bake: these files do not depend on the options."""
    result = cookies_session.bake()
    assert result.exit_code == 0, result.exception
    return result.project_path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool not found: apt install prometheus (./scripts/test does it as root)")
    return path


def run(args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


# ------------------------------------------------------------------------------
# Alert rules
# ------------------------------------------------------------------------------
def test_alert_rules_pass_their_unit_tests(project, promtool):
    result = run([promtool, "test", "rules", "alerts.test.yml"], project / "compose" / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("celery_queue_latency_seconds > on", "celery_queue_latency_seconds >= on", id="latency-at-sla"),
        pytest.param("> 120", "> 600", id="pool-threshold"),
        pytest.param("celery:worker_pool_declared unless", "celery:worker_pool_declared and", id="pool-never-seen"),
        pytest.param("or celery_dead_letters * 0", "", id="first-dead-letter"),
        pytest.param('outcome=~"success|failure"', 'outcome=~"success|failure|retry"', id="retries-as-runs"),
    ],
)
def test_the_unit_tests_catch_a_broken_rule(cookies, promtool, old, new):
    path = cookies.bake().project_path / "compose" / "prometheus"
    alerts = path / "alerts.yml"
    assert old in alerts.read_text()
    alerts.write_text(alerts.read_text().replace(old, new, 1))
    result = run([promtool, "test", "rules", "alerts.test.yml"], path)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout


def test_the_rules_are_the_contracts_and_each_is_tested_firing_and_quiet(project):
    alerts = {rule["alert"] for rule in rules(project / "compose" / "prometheus" / "alerts.yml")}
    assert alerts == ALERTS
    tests = yaml.safe_load((project / "compose" / "prometheus" / "alerts.test.yml").read_text())["tests"]
    evaluations = [check for test in tests for check in test.get("alert_rule_test", [])]
    fires = {check["alertname"] for check in evaluations if check["exp_alerts"]}
    quiet = {check["alertname"] for check in evaluations if not check["exp_alerts"]}
    assert (fires, quiet) == (ALERTS, ALERTS)


def test_rules_name_only_exported_series(project):
    """Alerts read /metrics' series and topology.yml's recorded ones; those read nothing."""
    recorded = rules(project / "compose" / "prometheus" / "topology.yml")
    assert all(series_in(rule["expr"]) == set() for rule in recorded)  # constants
    known = SERIES | {rule["record"] for rule in recorded}
    named = {
        name for rule in rules(project / "compose" / "prometheus" / "alerts.yml") for name in series_in(rule["expr"])
    }
    assert named - known == set()
    # Sanity of the check itself: it sees the names, and a name outside the contract.
    assert {"celery_queue_length", "celery_task_duration_seconds_bucket", "celery:worker_pool_declared"} <= named
    assert series_in("rate(celery_task_duration_seconds_total[5m]) > 1") - known == {
        "celery_task_duration_seconds_total"
    }


# ------------------------------------------------------------------------------
# The configuration, as entrypoint.sh completes it
# ------------------------------------------------------------------------------
def complete(project: Path, tmp_path: Path, credentials: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "METRICS_BASIC_AUTH": credentials,
        "METRICS_TARGET": "django:8000",
        "PROMETHEUS_CONFIG_DIR": str(project / "compose" / "prometheus"),
        "PROMETHEUS_RUN_DIR": str(tmp_path / "run"),
    }
    return run(["sh", str(project / "compose" / "prometheus" / "entrypoint.sh"), *args], tmp_path, env)


def test_completed_configuration_is_valid_and_carries_the_env_files_credentials(project, promtool, tmp_path):
    env_file = (project / ".envs" / ".production" / ".metrics").read_text()
    user, password = re.search(r"^METRICS_BASIC_AUTH=(\w+):(\S+)$", env_file, re.MULTILINE).groups()
    password += "'\" $x:#"  # a user's own password may hold anything: it goes into a file as it is

    result = complete(project, tmp_path, f"{user}:{password}", "check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
    run_dir = tmp_path / "run"
    assert (run_dir / "metrics-password").read_text() == password
    assert (run_dir / "metrics-password").stat().st_mode & 0o077 == 0  # for Prometheus's user alone
    (job,) = yaml.safe_load((run_dir / "prometheus.yml").read_text())["scrape_configs"]
    assert job["basic_auth"] == {"username": user, "password_file": "metrics-password"}
    assert job["static_configs"] == [{"targets": ["django:8000"]}]


@pytest.mark.parametrize("credentials", ["prometheus", "pro metheus:x", "a/b:x", ":x", "prom\nusername: x:y"])
def test_the_entrypoint_refuses_credentials_that_would_change_the_configuration(project, tmp_path, credentials):
    result = complete(project, tmp_path, credentials, "check")
    assert result.returncode == 1
    assert result.stderr.startswith("prometheus: METRICS_BASIC_AUTH") or "may only hold" in result.stderr
    assert not (tmp_path / "run" / "prometheus.yml").exists()


def test_compose_services_read_the_credentials_from_one_env_file(project):
    for name, env in (("docker-compose.yml", "local"), ("docker-compose.production.yml", "production")):
        services = yaml.safe_load((project / name).read_text())["services"]
        metrics_env = f"./.envs/.{env}/.metrics"
        assert services["prometheus"]["env_file"] == [metrics_env], name
        assert metrics_env in services["django"]["env_file"], name
        assert "METRICS_BASIC_AUTH" not in (project / ".envs" / f".{env}" / ".django").read_text()
        ports = services["prometheus"].get("ports", [])
        assert all(port.startswith("127.0.0.1:") for port in ports), name  # never published to the world


def test_the_projects_ci_tests_the_rules_with_the_image_compose_runs(project):
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    (step,) = [step for step in workflow["jobs"]["alert-rules"]["steps"] if "promtool" in step.get("run", "")]
    for name in ("docker-compose.yml", "docker-compose.production.yml"):
        image = yaml.safe_load((project / name).read_text())["services"]["prometheus"]["image"]
        assert f" {image} test rules alerts.test.yml" in step["run"], name


# ------------------------------------------------------------------------------
# The Grafana dashboard
# ------------------------------------------------------------------------------
def dashboard_queries(project: Path) -> dict[str, list[str]]:
    dashboard = json.loads((project / "compose" / "grafana" / "dashboards" / "celery.json").read_text())
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard["panels"]}


def test_dashboard_has_a_panel_per_series_and_names_only_exported_ones(project):
    queries = dashboard_queries(project)
    named = {title: set().union(*map(series_in, exprs)) for title, exprs in queries.items()}
    assert {title: names - SERIES for title, names in named.items() if names - SERIES} == {}
    shown = set().union(*named.values())
    families = {name for name in FAMILIES if any(series.startswith(name) for series in shown)}
    assert families == FAMILIES
    # p95 from the histogram, per task.
    assert any("histogram_quantile(0.95" in expr and "by (task" in expr for exprs in queries.values() for expr in exprs)
