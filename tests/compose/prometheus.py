"""What both stacks' Prometheus must show: the web target up, every queue's SLA, every pool's
heartbeat and beat's tick from their containers, every source readable, the rules loaded.

``fetch(path)`` returns the parsed JSON of ``GET http://<prometheus>:9090<path>``,
however the stack reaches it (a published port locally, ``docker compose exec`` in
production, where it is not published).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from ..metrics_contract import ALERTS
from .stack import wait_until

# The fixed queue and pool names (DESIGN.md).
QUEUES = {"high", "default", "low", "export"}
POOLS = {"worker-high", "worker-default", "worker-export"}


def django_target(fetch: Callable[[str], dict]) -> dict | None:
    """The scrape target of the django job once it has been scraped at least once."""
    targets = fetch("/api/v1/targets")["data"]["activeTargets"]
    (target,) = [target for target in targets if target["labels"]["job"] == "django"]
    return target if target["health"] != "unknown" else None


def check_prometheus(fetch: Callable[[str], dict]) -> None:
    # The first scrape comes within one scrape interval (15 s) of the start.
    target = wait_until(lambda: django_target(fetch), 60, "Prometheus's first scrape of /metrics")
    # "up" only if /metrics accepted METRICS_BASIC_AUTH: a 401 (or the production
    # settings' host check or HTTPS redirect) makes it "down", with the reason.
    assert (target["health"], target["lastError"]) == ("up", ""), target

    query = urllib.parse.urlencode({"query": "celery_queue_sla_seconds"})
    samples = fetch(f"/api/v1/query?{query}")["data"]["result"]
    assert sorted(sample["metric"]["queue"] for sample in samples) == sorted(QUEUES)

    def query(expression: str) -> list[dict]:
        return fetch("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))["data"]["result"]

    # Written by the pools' and beat's own loops into Redis, exported by the web: the
    # series CeleryWorkerPoolMissing and CeleryBeatSilent read, live from the containers.
    def heartbeats() -> set[str] | None:
        pools = {
            sample["metric"]["pool"]
            for sample in query("time() - celery_worker_pool_heartbeat_timestamp_seconds < 120")
        }
        return pools if pools >= POOLS and query("time() - celery_beat_tick_timestamp_seconds < 120") else None

    wait_until(heartbeats, 90, "every pool's heartbeat and beat's tick in Prometheus")
    sources = {sample["metric"]["source"]: sample["value"][1] for sample in query("celery_metrics_source_up")}
    assert sources == {"redis": "1", "broker": "1", "database": "1"}

    def evaluated_rules() -> list[dict] | None:
        rules = [rule for group in fetch("/api/v1/rules")["data"]["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = wait_until(evaluated_rules, 60, "the rules' first evaluation")
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == ALERTS
    assert [rule for rule in rules if rule["health"] != "ok"] == []  # each one evaluates without an error
