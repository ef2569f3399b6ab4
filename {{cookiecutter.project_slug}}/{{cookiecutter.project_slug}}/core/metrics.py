"""Task and queue metrics for Prometheus, kept in Redis so every process adds to them.

Workers record each task run (BaseTask) and each canary sample (core/tasks.py);
worker pools and beat stamp their heartbeats; the web process exports all of it,
with what the broker and the database say right now, at ``/metrics`` (basic auth:
METRICS_BASIC_AUTH). Series:

    celery_queue_latency_seconds{queue}      last enqueue-to-start delay of the canary
    celery_queue_sla_seconds{queue}          the SLA declared in config/topology.py
    celery_queue_length{queue_name}          messages waiting, asked of the broker
    celery_task_runs_total{task,outcome}     runs by outcome (success, failure, retry)
    celery_task_duration_seconds{task,queue} histogram of run times (_bucket{le}, _sum, _count)
    celery_worker_pool_heartbeat_timestamp_seconds{pool}  when a worker of the pool last beat
    celery_beat_tick_timestamp_seconds       when beat's scheduler last ticked
    celery_dead_letters{task}                FailedTask rows not replayed yet
    celery_metrics_source_up{source}         1 if this scrape could read redis, broker, database

A scrape never fails because a dependency is down: every source is read on its
own, what could be read is exported, and ``celery_metrics_source_up`` says which
source was missing (alert on it: a silent series is not a healthy one).

Each canary sample is also kept in a short list per queue (the last
HISTORY_LENGTH), for the operations page's latency charts.
"""

import atexit
import base64
import binascii
import bisect
import hmac
import logging
import os
import threading
import time
from collections import Counter, defaultdict

from celery import signals
from django.conf import settings
from django.db.models import Count
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from config import topology

from .health import broker_connection
from .redis_client import fail_fast_redis, shared_redis

logger = logging.getLogger(__name__)

RUNS, LATENCY = "metrics:task_runs", "metrics:queue_latency"
# One hash of counters: "<task>|<queue>|<le>" counts the runs that fell in that
# bucket alone (not cumulative), "<task>|<queue>|sum" adds up their seconds.
DURATIONS = "metrics:task_durations"
# Unix times: field <pool name> (worker-high, ...) and the beat's tick.
POOL_HEARTBEATS, BEAT_TICK = "metrics:pool_heartbeats", "metrics:beat_tick"
# One list per queue ("metrics:queue_latency_history:<queue>"), newest first,
# capped: one canary a minute, so the last hour. Prometheus keeps the long history.
HISTORY = "metrics:queue_latency_history:"
HISTORY_LENGTH = 60
HISTORY_WINDOW = HISTORY_LENGTH * 60  # seconds the list spans: the charts' time axis

# Upper bounds of the duration buckets, in seconds: from a 10 ms password reset to
# a 30-minute export (the export pool's time limit). +Inf is implied.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
_BUCKET_LABELS = (*(floatToGoString(bound) for bound in DURATION_BUCKETS), "+Inf")

store = shared_redis  # where the metrics live
scrape_store = fail_fast_redis  # the same, read by /metrics: a Redis that is down must not hang a scrape


# --8<-- [start:record-task]
class TaskMetrics:
    """This process's task counters, sent to Redis in one pipeline at most once a second.

    A run only adds to counters in memory (``add``: no I/O, a few microseconds);
    a daemon thread sends what piled up every ``interval`` seconds, so a burst of
    a thousand tasks costs one round trip, not a thousand. Sent after every task,
    the write cost about 0.3 ms of the pool child's CPU per task
    (benchmarks/overhead.py), a tenth of a no-op task's whole cost. Prometheus
    scrapes every 15 s or so: a second's delay is invisible to it.

    The histogram adds nothing either: a run counts in the one bucket it fell in,
    and /metrics adds the buckets up (Prometheus wants each bucket to count every
    run at or below its bound). A clean exit (the pool child's
    ``worker_process_shutdown``, or interpreter exit in the solo pool) flushes;
    a killed process loses at most its last second. While Redis is down the
    counts stay here and go with the next flush that succeeds.
    """

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._reset()
        # A pool child is forked from the worker's main process: it starts with
        # empty counters, a fresh lock and (on its first run) its own flusher
        # thread, since threads do not survive a fork.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()  # (hash, field) -> increment
        self._seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._flusher: threading.Thread | None = None

    def add(self, name: str, outcome: str, duration: float, queue: str = "") -> None:
        bucket = _BUCKET_LABELS[bisect.bisect_left(DURATION_BUCKETS, duration)]
        with self._lock:
            self._counts[RUNS, f"{name}|{outcome}"] += 1
            self._counts[DURATIONS, f"{name}|{queue}|{bucket}"] += 1
            self._seconds[DURATIONS, f"{name}|{queue}|sum"] += duration
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="task-metrics", daemon=True)
                self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        """Send every pending increment in one pipeline (no MULTI/EXEC: each is atomic on its own)."""
        with self._lock:
            counts, seconds = self._counts, self._seconds
            self._counts, self._seconds = Counter(), defaultdict(float)
        if not counts:
            return
        try:
            with store().pipeline(transaction=False) as pipe:
                for (key, field), increment in counts.items():
                    pipe.hincrby(key, field, increment)
                for (key, field), increment in seconds.items():
                    pipe.hincrbyfloat(key, field, increment)
                pipe.execute()
        except Exception as exc:
            with self._lock:  # keep them for the next flush
                self._counts.update(counts)
                for key, increment in seconds.items():
                    self._seconds[key] += increment
            logger.warning("metrics: could not send task metrics, kept for the next flush: %s", exc)


task_metrics = TaskMetrics()
record_task = task_metrics.add  # called by the base task after every run
atexit.register(task_metrics.flush)


@signals.worker_process_shutdown.connect
def _flush_before_the_pool_child_exits(**kwargs):
    task_metrics.flush()
    # --8<-- [end:record-task]


def record_latency(queue: str, seconds: float, at: float | None = None) -> None:
    """The canary's sample: the gauge's last value, and the capped history (``at``: when, Unix time)."""
    at = time.time() if at is None else at
    with store().pipeline() as pipe:
        pipe.hset(LATENCY, queue, seconds)
        pipe.lpush(HISTORY + queue, f"{at:.3f} {seconds:.6f}")
        pipe.ltrim(HISTORY + queue, 0, HISTORY_LENGTH - 1)  # a list that never grows past the cap
        pipe.execute()


class Heartbeat:
    """Stamp "alive now" into Redis for a long-running process, without ever slowing or breaking it.

    Called from the process's own loop (the worker's timer, beat's tick), so that
    a hung loop stops the stamps. The write runs on a short-lived thread: a Redis
    that is down or slow costs the loop nothing, a failed write is only logged,
    and while one write is still under way the next call skips its turn.
    ``min_interval`` (seconds) caps how often a frequent caller writes.
    """

    def __init__(self, key: str, field: str | None = None, min_interval: float = 0.0):
        self.key, self.field, self.min_interval = key, field, min_interval
        self._last = float("-inf")
        self._writing: threading.Thread | None = None

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval or (self._writing and self._writing.is_alive()):
            return
        self._last = now
        self._writing = threading.Thread(target=self._write, args=(time.time(),), daemon=True)
        self._writing.start()

    def _write(self, at: float) -> None:
        try:
            if self.field is None:
                store().set(self.key, at)
            else:
                store().hset(self.key, self.field, at)
        except Exception as exc:
            logger.warning("metrics: could not record the heartbeat %s %s: %s", self.key, self.field or "", exc)


def pool_heartbeat(pool: str) -> Heartbeat:
    return Heartbeat(POOL_HEARTBEATS, pool)


def latencies() -> dict[str, float]:
    return {key.decode(): float(value) for key, value in store().hgetall(LATENCY).items()}


def latency_history(queue: str) -> list[tuple[float, float]]:
    """The last HISTORY_LENGTH canary samples of ``queue``, oldest first: (Unix time, seconds waited)."""
    samples = [item.decode().split() for item in store().lrange(HISTORY + queue, 0, -1)]
    return [(float(at), float(seconds)) for at, seconds in reversed(samples)]


def read_queue_lengths() -> dict[str, int]:
    """Messages waiting in each queue, from the broker itself (Redis or RabbitMQ); raises if it is down.

    Declaring a queue the way the workers do is idempotent and answers with its
    message count on every broker kombu supports; a passive declare would fail
    on a queue no worker has declared yet. One connection attempt with short
    timeouts: a scrape must not hang on a broker that is down, or stuck.
    """
    from config.celery_app import app

    with broker_connection(timeout=2) as connection:
        channel = connection.default_channel
        return {name: app.amqp.queues[name].bind(channel).queue_declare().message_count for name in topology.QUEUES}


def queue_depths() -> dict[str, int]:
    """``read_queue_lengths()``, or empty when the broker is unreachable (for the operations page)."""
    try:
        return read_queue_lengths()
    except Exception:
        logger.warning("metrics: cannot read queue lengths from the broker", exc_info=True)
        return {}


def _from_redis():
    client = scrape_store()
    with client.pipeline(transaction=False) as pipe:
        for key in (LATENCY, RUNS, DURATIONS, POOL_HEARTBEATS):
            pipe.hgetall(key)
        pipe.get(BEAT_TICK)
        latency_samples, runs_by_key, durations, heartbeats, beat_tick = pipe.execute()

    latency = GaugeMetricFamily("celery_queue_latency_seconds", "Canary enqueue-to-start delay", labels=["queue"])
    for queue, seconds in latency_samples.items():
        latency.add_metric([queue.decode()], float(seconds))

    runs = CounterMetricFamily("celery_task_runs", "Task runs by outcome", labels=["task", "outcome"])
    for key, value in runs_by_key.items():
        task, outcome = key.decode().rsplit("|", 1)
        runs.add_metric([task, outcome], int(value))

    # Per (task, queue): the runs of each bucket alone, then added up from the
    # smallest bound to +Inf, as Prometheus histograms count.
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(_BUCKET_LABELS))
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for key, value in durations.items():
        task, queue, le = key.decode().rsplit("|", 2)
        if le == "sum":
            sums[task, queue] = float(value)
        else:  # a bound dropped from DURATION_BUCKETS since: the next bound above it
            counts[task, queue][bisect.bisect_left(DURATION_BUCKETS, float(le))] += int(value)
    duration = HistogramMetricFamily("celery_task_duration_seconds", "Task run time", labels=["task", "queue"])
    for (task, queue), own in sorted(counts.items()):
        cumulative = [sum(own[: index + 1]) for index in range(len(own))]
        duration.add_metric([task, queue], list(zip(_BUCKET_LABELS, cumulative, strict=True)), sums[task, queue])

    pools = GaugeMetricFamily(
        "celery_worker_pool_heartbeat_timestamp_seconds", "Unix time a worker of the pool last beat", labels=["pool"]
    )
    for pool, at in heartbeats.items():
        pools.add_metric([pool.decode()], float(at))
    yield from (latency, runs, duration, pools)
    if beat_tick is not None:
        yield GaugeMetricFamily("celery_beat_tick_timestamp_seconds", "Unix time beat last ticked", float(beat_tick))


def _from_broker():
    length = GaugeMetricFamily("celery_queue_length", "Messages waiting in the queue", labels=["queue_name"])
    for queue, count in read_queue_lengths().items():
        length.add_metric([queue], count)
    yield length


def _from_database():
    from .models import FailedTask

    waiting = FailedTask.objects.filter(replayed_at__isnull=True).values_list("task_name").annotate(Count("id"))
    dead = GaugeMetricFamily("celery_dead_letters", "Dead letters (FailedTask) not replayed yet", labels=["task"])
    for task, count in waiting.order_by("task_name"):
        dead.add_metric([task], count)
    yield dead


SOURCES = {"redis": _from_redis, "broker": _from_broker, "database": _from_database}


class TaskQueueCollector:
    def collect(self):
        sla = GaugeMetricFamily("celery_queue_sla_seconds", "Declared wait SLA", labels=["queue"])
        for queue in topology.QUEUES:
            sla.add_metric([queue], topology.SLA_SECONDS[queue])
        yield sla

        up = GaugeMetricFamily("celery_metrics_source_up", "1 if this scrape could read the source", labels=["source"])
        for source, read in SOURCES.items():
            try:
                families = list(read())  # all or nothing per source
            except Exception as exc:
                logger.warning("metrics: cannot read %s: %s", source, exc)
                families = []
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
            yield from families
        yield up


# --8<-- [start:authorized]
def _authorized(request) -> bool:
    """The request carries METRICS_BASIC_AUTH as basic auth. Anything else, whatever its bytes, is a no.

    Compared as bytes (``hmac.compare_digest`` refuses non-ASCII text with a
    TypeError, which was a 500): the header as it came over the wire (WSGI hands
    it over decoded as latin-1), base64-decoded strictly.
    """
    expected = getattr(settings, "METRICS_BASIC_AUTH", "")
    if not expected:
        return False
    try:
        scheme, _, token = request.headers.get("Authorization", "").encode("latin-1").partition(b" ")
        given = base64.b64decode(token.strip(), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return False
    return scheme.lower() == b"basic" and hmac.compare_digest(given, expected.encode())
    # --8<-- [end:authorized]


def metrics_view(request):
    """Prometheus scrape endpoint. Closed unless METRICS_BASIC_AUTH is set and given."""
    if not _authorized(request):
        response = HttpResponse("authentication required", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Basic realm="metrics"'
        return response
    registry = CollectorRegistry()
    registry.register(TaskQueueCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
