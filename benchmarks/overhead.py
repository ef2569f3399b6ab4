"""Task overhead: the baked worker-high beside bare Celery, and what each of its settings costs.

    .venv/bin/python benchmarks/overhead.py [--round-trips 300] [--burst 2000]
                                            [--brokers redis,rabbitmq] [--rounds 1] [--no-ablation]

Every row is one worker of 4 prefork processes on the queue the task is routed to,
started fresh, on the same broker and the same Redis result backend, in one run:

* ``bare Celery``: ``Celery(broker, backend)`` and a task that returns None, Celery's
  defaults otherwise (prefetch multiplier 4, early acks, no events, no database);
  ``ours, a no-op task`` is the same no-op through the project's task class, routes
  and settings: the like-for-like comparison (always measured, ``--no-ablation`` too).
* ``ours``: the baked project's ``python -m config.worker worker-high`` running the
  password-reset task for a user that does not exist (one indexed lookup, a log line,
  return): everything the template adds, with nothing to do.
* the ablation rows: ``ours`` with one setting switched off (or on) at a time, through a
  settings module written next to the project's own, so that each row shows what
  that setting costs. ``prefetch 4`` is the many-tiny-tasks profile (docs/topology.md).

Round trip = ``delay()`` to the result available; throughput = a burst sent at once
and drained; CPU per task = CPU time the burst cost the worker's processes, the client
and the Redis server, divided by the tasks (steadier than throughput on a shared
machine; Postgres and RabbitMQ not counted). Logs at INFO (as in production) to
/dev/null. Not part of the test suite.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
from dataclasses import dataclass

from baked import baked_project

# The load, run as a client in the project's directory (Django set up for "ours").
LOAD = """
import json, os, resource, sys, time
import redis
{setup}
task = {task}


def cpu_seconds(group):
    # CPU used so far by the worker's processes (its process group; the reaped children
    # count in the main process' cutime), by this client, and by the Redis server.
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            ticks += sum(map(int, fields[11:15 if int(pid) == group else 13]))
    own = resource.getrusage(resource.RUSAGE_SELF)
    server = redis.Redis.from_url(os.environ["REDIS_URL"]).info("cpu")
    return ticks / os.sysconf("SC_CLK_TCK") + own.ru_utime + own.ru_stime + server["used_cpu_user"] + server["used_cpu_sys"]


for _ in range(40):
    task.apply_async((0,), ignore_result=False).get(timeout=60)  # every pool process warm
rtts = []
for _ in range({round_trips}):
    start = time.perf_counter()
    task.apply_async((0,), ignore_result=False).get(timeout=30)
    rtts.append(time.perf_counter() - start)
cpu = cpu_seconds({group})
start = time.perf_counter()
results = [task.apply_async((0,), ignore_result=False) for _ in range({burst})]
for result in results:
    result.get(timeout=300)
elapsed = time.perf_counter() - start
cpu = cpu_seconds({group}) - cpu
print(json.dumps({{"rtts": rtts, "burst_seconds": elapsed, "cpu_seconds": cpu}}))
"""

OURS_SETUP = "import django; django.setup()\nfrom {slug}.users.tasks import send_password_reset_email"
OURS_TASK = "send_password_reset_email"

# Bare Celery: nothing but the broker and the result backend the baked project uses.
BARE_APP = """
import os
from celery import Celery

app = Celery("bare", broker=os.environ["CELERY_BROKER_URL"], backend=os.environ["CELERY_RESULT_BACKEND"])
app.conf.task_default_queue = "bare-high"  # its own queue: RabbitMQ's "high" is a quorum queue


@app.task
def noop(user_id):
    return None
"""


@dataclass(frozen=True)
class Variant:
    label: str
    settings: str = ""  # Python appended to a copy of config/settings/local.py
    env: tuple = ()  # extra environment of the worker and the client
    prefetch: int | None = None  # the pool's prefetch multiplier instead of its profile's
    drop: tuple = ()  # worker arguments left out (prefixes)
    noop: bool = False  # run BENCH_TASKS' no-op (our task class, no query) instead of the reset task


# A no-op through the project's task class and routes: ours without the task's own query.
BENCH_TASKS = """
from celery import shared_task


@shared_task
def noop(user_id):
    return None
"""
NOOP_SETTINGS = (
    "CELERY_IMPORTS = ('bench_tasks',)\nCELERY_TASK_ROUTES = {{'bench_tasks.*': 'high', **CELERY_TASK_ROUTES}}"
)

# The settings each ablation row changes; the last row combines several of them.
EVENTS_ON = "CELERY_WORKER_SEND_TASK_EVENTS = True"
EXTENDED_OFF = "CELERY_RESULT_EXTENDED = False"
LATE_ACKS_OFF = "CELERY_TASK_ACKS_LATE = False"
HEALTH_CHECKS_OFF = "DATABASES['default']['CONN_HEALTH_CHECKS'] = False"
METRICS_OFF = (
    "from celery.signals import worker_init\n\n"
    "@worker_init.connect\ndef _no_metrics(**kwargs):\n"
    "    from {slug}.core import metrics\n"
    "    metrics.record_task = lambda *args: None"
)
RUN_LOG_OFF = "LOGGING['loggers'] = {{'tasks': {{'level': 'WARNING'}}}}"

# The like-for-like row: bare's no-op through our task class, routes and settings.
OURS_NOOP = Variant("ours, a no-op task (no query)", NOOP_SETTINGS, noop=True)

# What "ours" turns on beyond bare Celery, each switched off in turn.
ABLATION = [
    Variant("- time limits", drop=("--soft-time-limit", "--time-limit")),
    Variant("- max memory and tasks per child", drop=("--max-memory-per-child", "--max-tasks-per-child")),
    Variant("- dead-letter consumer", "CELERY_WORKER_CONSUMER = 'celery.worker.consumer:Consumer'"),
    Variant("+ worker task events (while Flower runs)", EVENTS_ON),
    Variant("+ task-sent events (off in ours)", "CELERY_TASK_SEND_SENT_EVENT = True"),
    Variant("+ track started (off in ours)", "CELERY_TASK_TRACK_STARTED = True"),
    Variant("- extended results", EXTENDED_OFF),
    Variant("- late acks", LATE_ACKS_OFF),
    Variant("- connection health checks", HEALTH_CHECKS_OFF),
    Variant("- metrics write", METRICS_OFF),
    Variant("- run-log line", RUN_LOG_OFF),
    Variant("- connection reuse (Celery's default)", env=(("CELERY_DB_REUSE_MAX", "0"),)),
    Variant("+ prefetch 4 (many tiny tasks)", prefetch=4),
    Variant(
        "- extended results, late acks, checks, metrics, log; prefetch 4",
        "\n".join((EXTENDED_OFF, LATE_ACKS_OFF, HEALTH_CHECKS_OFF, RUN_LOG_OFF, METRICS_OFF)),
        prefetch=4,
    ),
]


@dataclass
class Figures:
    p50: float
    p99: float
    rate: float
    cpu: float  # ms of CPU per task in the burst: worker processes, client and Redis server

    @classmethod
    def of(cls, result: dict, burst: int) -> "Figures":
        rtts = sorted(result["rtts"])
        p99 = rtts[min(int(len(rtts) * 0.99), len(rtts) - 1)]
        cpu = result["cpu_seconds"] * 1000 / burst
        return cls(statistics.median(rtts) * 1000, p99 * 1000, burst / result["burst_seconds"], cpu)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def measure(project, worker: list[str], setup: str, task: str, env: dict, options) -> Figures:
    """Start ``worker``, run the load against it, kill it; the figures of that one run."""
    env = project.env | env
    process = subprocess.Popen(worker, cwd=project.path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        code = LOAD.format(
            setup=setup, task=task, round_trips=options.round_trips, burst=options.burst, group=process.pid
        )
        result = subprocess.run(["python", "-c", code], cwd=project.path, env=env, capture_output=True,
                                text=True, timeout=900, check=False)  # fmt: skip
        if result.returncode:
            raise RuntimeError(f"the load failed:\n{result.stdout}\n{result.stderr}")
    finally:
        stop(process)
    project.sh("python", "-m", "celery", "-A", "config.celery_app", "purge", "-f")
    return Figures.of(json.loads(result.stdout.splitlines()[-1]), options.burst)


def run_broker(broker: str, options) -> list[tuple[str, Figures]]:
    rows: dict[str, list[Figures]] = {}
    extra = {"DJANGO_LOG_LEVEL": "INFO", "CELERY_LOG_LEVEL": "INFO"}
    with baked_project(f"blueprint_overhead_{broker}", redis_db=11, broker=broker, **extra) as project:
        slug = project.slug
        (project.path / "bare_app.py").write_text(BARE_APP)
        (project.path / "bench_tasks.py").write_text(BENCH_TASKS)
        local = (project.path / "config" / "settings" / "local.py").read_text()
        bare_env = {
            "CELERY_BROKER_URL": project.env.get("CELERY_BROKER_URL", project.env["REDIS_URL"]),
            "CELERY_RESULT_BACKEND": project.env["REDIS_URL"],
        }
        variants = [Variant("ours"), OURS_NOOP] + (ABLATION if options.ablation else [])
        for _ in range(options.rounds):
            rows.setdefault("bare Celery", []).append(measure(
                project, ["python", "-m", "celery", "-A", "bare_app", "worker", "--concurrency=4",
                          "--loglevel=INFO", "--hostname=bare@%h"],
                "from bare_app import noop", "noop", bare_env, options))  # fmt: skip
            for number, variant in enumerate(variants):
                env = dict(variant.env)
                if variant.settings:
                    module = f"bench_{number}"
                    body = local + "\n\n# benchmarks/overhead.py\n" + variant.settings.format(slug=slug) + "\n"
                    (project.path / "config" / "settings" / f"{module}.py").write_text(body)
                    env["DJANGO_SETTINGS_MODULE"] = f"config.settings.{module}"
                worker = project.sh("python", "-m", "config.worker", "worker-high", "--print").stdout.split()
                worker = [arg for arg in worker if not arg.startswith(variant.drop or ("-never-",))]
                if variant.prefetch:
                    worker = [f"--prefetch-multiplier={variant.prefetch}" if arg.startswith("--prefetch-multiplier")
                              else arg for arg in worker]  # fmt: skip
                setup, task = OURS_SETUP.format(slug=slug), OURS_TASK
                if variant.noop:
                    setup, task = "import django; django.setup()\nfrom bench_tasks import noop", "noop"
                rows.setdefault(variant.label, []).append(measure(project, worker, setup, task, env, options))
    # Several rounds: each figure is the median of its rounds.
    return [
        (label, Figures(*(statistics.median(getattr(f, name) for f in runs) for name in ("p50", "p99", "rate", "cpu"))))
        for label, runs in rows.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--rounds", type=int, default=1, help="measure every row this many times (median)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false")
    options = parser.parse_args()

    for broker in options.brokers.split(","):
        rows = run_broker(broker, options)
        bare = rows[0][1]
        name = {"redis": "Redis", "rabbitmq": "RabbitMQ (quorum queues, confirms)"}[broker]
        print(f"\n{name} broker, Redis results; one pool of 4 processes; {os.cpu_count()} cores; "
              f"{options.round_trips} round trips, burst of {options.burst}; {options.rounds} round(s)\n")  # fmt: skip
        print("| worker | round trip p50 | p99 | burst | CPU per task | p50 vs bare | burst vs bare |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, f in rows:
            print(f"| {label} | {f.p50:.1f} ms | {f.p99:.1f} ms | {f.rate:,.0f} tasks/s | {f.cpu:.2f} ms "
                  f"| {f.p50 / bare.p50:.2f}x | {f.rate / bare.rate:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()
