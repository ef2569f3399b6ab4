"""What the compose stacks' Prometheus relies on: compose/prometheus/ and how /metrics answers it."""

import base64
import dataclasses
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from config import topology

from ..management.commands import prometheus_rules

TOPOLOGY_RULES = Path(django_settings.BASE_DIR) / "compose" / "prometheus" / "topology.yml"


def test_topology_rules_are_generated_from_the_topology(capsys):
    """compose/prometheus/topology.yml is what `manage.py prometheus_rules` prints today."""
    call_command("prometheus_rules")
    assert TOPOLOGY_RULES.read_text() == capsys.readouterr().out, (
        "compose/prometheus/topology.yml is out of date with config/topology.py: "
        "python manage.py prometheus_rules > compose/prometheus/topology.yml"
    )


def test_topology_rules_follow_a_change_of_the_topology(monkeypatch):
    """A new pool and a longer soft limit show up in the rules (so the test above can fail)."""
    before = prometheus_rules.render()
    export = topology.pool_named("worker-export")
    pools = (*topology.POOLS[:-1], dataclasses.replace(export, soft_time_limit=3600))
    monkeypatch.setattr(topology, "POOLS", (*pools, dataclasses.replace(export, name="worker-reports", queues=())))
    after = prometheus_rules.render()
    assert after != before
    assert 'pool: "worker-reports"' in after
    assert "vector(1800)" in after  # half of export's new soft limit
    assert "vector(870)" not in after


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.mark.django_db
def test_metrics_answer_prometheus_by_the_services_name_over_plain_http(client, settings):
    """Production refuses other hosts and redirects plain HTTP; /metrics, like /healthz, comes first."""
    settings.ALLOWED_HOSTS = ["shop.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS_BASIC_AUTH = "prometheus:secret"

    assert client.get("/", HTTP_HOST="django:8000").status_code == 400  # DisallowedHost
    assert client.get("/", HTTP_HOST="shop.example.com").status_code == 301  # to https

    response = client.get("/metrics", HTTP_HOST="django:8000", HTTP_AUTHORIZATION=basic("prometheus:secret"))
    assert response.status_code == 200
    assert "celery_queue_sla_seconds" in response.content.decode()
    # Its own basic auth still guards it.
    assert client.get("/metrics", HTTP_HOST="django:8000").status_code == 401
