"""The series /metrics exports, as Prometheus stores them: the one list the checks read.

The baked project's core/metrics.py exports them (its docstring lists them with their
labels); the alert rules (compose/prometheus/alerts.yml) and the Grafana dashboard
(compose/grafana/dashboards/celery.json) may name these and nothing else, or a rule
would wait forever for a series that never comes and a panel would stay empty.
"""

import re

GAUGES = {
    "celery_queue_latency_seconds",  # {queue}
    "celery_queue_sla_seconds",  # {queue}
    "celery_queue_length",  # {queue_name}, celery-exporter's name and label
    "celery_worker_pool_heartbeat_timestamp_seconds",  # {pool}
    "celery_beat_tick_timestamp_seconds",
    "celery_dead_letters",  # {task}
    "celery_metrics_source_up",  # {source}: redis, broker, database
}
COUNTERS = {"celery_task_runs"}  # {task, outcome}: success, failure, retry
HISTOGRAMS = {"celery_task_duration_seconds"}  # {task, queue}

# What a query can name: a counter with its _total, a histogram as its three parts.
SERIES = frozenset(
    GAUGES
    | {f"{name}_total" for name in COUNTERS}
    | {f"{name}_{part}" for name in HISTOGRAMS for part in ("bucket", "sum", "count")}
)
# One name per family, for "every series has a panel".
FAMILIES = frozenset(GAUGES | COUNTERS | HISTOGRAMS)

# The alert rules compose/prometheus/alerts.yml ships (names fixed by the contract).
ALERTS = {
    "CeleryQueueLatencyOverSLA",
    "CeleryQueueGrowing",
    "CeleryWorkerPoolMissing",
    "CeleryBeatSilent",
    "CeleryTaskFailureRateHigh",
    "CeleryDeadLettersAppearing",
    "CeleryMetricsSourceDown",
    "CeleryTaskDurationP95High",
}

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "inf", "nan"}  # fmt: skip


def series_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (recording rules' names included)."""
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)  # Grafana variables ($__rate_interval)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    # Label lists of by/without/on/ignoring/group_left/group_right, and offset's duration.
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\S+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if not expr[match.end() :].lstrip().startswith("("):  # not a function or an aggregation
            names.add(match.group())
    return {name for name in names if name.lower() not in PROMQL_KEYWORDS}
