"""Task and queue metrics for Prometheus, kept in Redis so every process adds to them.

Workers record each task run (BaseTask) and each canary sample (core/tasks.py);
the web process exports them, with the current queue depths, at ``/metrics``
(basic auth: METRICS_BASIC_AUTH). Series:

    celery_queue_latency_seconds{queue}    last enqueue-to-start delay of the canary
    celery_queue_sla_seconds{queue}        the SLA declared in config/topology.py
    celery_queue_depth{queue}              messages waiting, asked of the broker
    celery_task_runs_total{task,outcome}   runs by outcome (success, failure, retry)
    celery_task_duration_seconds_total{task}  time spent running the task

Each canary sample is also kept in a short list per queue (the last
HISTORY_LENGTH), for the operations page's latency charts.
"""

import base64
import hmac
import logging
import time

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from config import topology

from .redis_client import shared_redis

logger = logging.getLogger(__name__)

RUNS, SECONDS, LATENCY = "metrics:task_runs", "metrics:task_seconds", "metrics:queue_latency"
# One list per queue ("metrics:queue_latency_history:<queue>"), newest first,
# capped: one canary a minute, so the last hour. Prometheus keeps the long history.
HISTORY = "metrics:queue_latency_history:"
HISTORY_LENGTH = 60


store = shared_redis  # where the metrics live


def record_task(name: str, outcome: str, duration: float) -> None:
    # Two increments in one round trip; no MULTI/EXEC: each is atomic on its own,
    # and this runs after every task (benchmarks/overhead.py measures it).
    with store().pipeline(transaction=False) as pipe:
        pipe.hincrby(RUNS, f"{name}|{outcome}", 1)
        pipe.hincrbyfloat(SECONDS, name, duration)
        pipe.execute()


def record_latency(queue: str, seconds: float, at: float | None = None) -> None:
    """The canary's sample: the gauge's last value, and the capped history (``at``: when, Unix time)."""
    at = time.time() if at is None else at
    with store().pipeline() as pipe:
        pipe.hset(LATENCY, queue, seconds)
        pipe.lpush(HISTORY + queue, f"{at:.3f} {seconds:.6f}")
        pipe.ltrim(HISTORY + queue, 0, HISTORY_LENGTH - 1)  # a list that never grows past the cap
        pipe.execute()


def latencies() -> dict[str, float]:
    return {key.decode(): float(value) for key, value in store().hgetall(LATENCY).items()}


def latency_history(queue: str) -> list[tuple[float, float]]:
    """The last HISTORY_LENGTH canary samples of ``queue``, oldest first: (Unix time, seconds waited)."""
    samples = [item.decode().split() for item in store().lrange(HISTORY + queue, 0, -1)]
    return [(float(at), float(seconds)) for at, seconds in reversed(samples)]


def queue_depths() -> dict[str, int]:
    """Messages waiting in each queue, from the broker itself (Redis or RabbitMQ).

    Declaring a queue the way the workers do is idempotent and answers with its
    message count on every broker kombu supports; a passive declare would fail
    on a queue no worker has declared yet. Empty when the broker is unreachable:
    a scrape must not fail because of it (the latency gauges still say enough).
    """
    from config.celery_app import app

    try:
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            return {
                name: app.amqp.queues[name].bind(channel).queue_declare().message_count for name in topology.QUEUES
            }
    except Exception:
        logger.warning("metrics: cannot read queue depths from the broker", exc_info=True)
        return {}


class TaskQueueCollector:
    def collect(self):
        client = store()
        latency = GaugeMetricFamily("celery_queue_latency_seconds", "Canary enqueue-to-start delay", labels=["queue"])
        sla = GaugeMetricFamily("celery_queue_sla_seconds", "Declared wait SLA", labels=["queue"])
        depth = GaugeMetricFamily("celery_queue_depth", "Messages waiting in the queue", labels=["queue"])
        samples, depths = latencies(), queue_depths()
        for queue in topology.QUEUES:
            if queue in samples:
                latency.add_metric([queue], samples[queue])
            sla.add_metric([queue], topology.SLA_SECONDS[queue])
            if queue in depths:
                depth.add_metric([queue], depths[queue])
        yield from (latency, sla, depth)

        runs = CounterMetricFamily("celery_task_runs", "Task runs by outcome", labels=["task", "outcome"])
        for key, value in client.hgetall(RUNS).items():
            task, outcome = key.decode().rsplit("|", 1)
            runs.add_metric([task, outcome], int(value))
        seconds = CounterMetricFamily("celery_task_duration_seconds", "Time spent running tasks", labels=["task"])
        for key, value in client.hgetall(SECONDS).items():
            seconds.add_metric([key.decode()], float(value))
        yield from (runs, seconds)


def _authorized(request) -> bool:
    expected = getattr(settings, "METRICS_BASIC_AUTH", "")
    header = request.headers.get("Authorization", "")
    if not expected or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header.removeprefix("Basic ")).decode()
    except ValueError:
        return False
    return hmac.compare_digest(given, expected)


def metrics_view(request):
    """Prometheus scrape endpoint. Closed unless METRICS_BASIC_AUTH is set and given."""
    if not _authorized(request):
        response = HttpResponse("authentication required", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Basic realm="metrics"'
        return response
    registry = CollectorRegistry()
    registry.register(TaskQueueCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
