"""The queue topology: the single source of truth for background work.

Everything that depends on *which queues exist*, *which task goes where* and *how
each worker pool is tuned* reads this module:

* ``config/settings/base.py`` builds ``CELERY_TASK_QUEUES`` and ``CELERY_TASK_ROUTES``
  and derives the broker's redelivery timeout from the pools' hard time limits;
* ``python -m config.worker <pool>`` (used by the ``Procfile`` and by every compose
  worker service) turns a pool's profile into the ``celery worker`` command line;
* the system check in ``<project>/core/checks.py`` (run by ``manage.py check``)
  fails when a task has no route, a route names an unknown queue, or a queue has no
  pool consuming it.

This module deliberately imports nothing from Django or Celery so that tools and
scripts can read it without configuring either.

Why several pools instead of one? A single shared pool lets a 30-minute export
occupy every process while a password-reset email waits behind it. Each pool below
serves queues with one kind of work and is tuned for it.
"""

from __future__ import annotations

from dataclasses import dataclass

# --8<-- [start:queues]
# Every queue the project uses. ``default`` is Celery's fallback for anything sent
# without a route; we never use Celery's implicit ``celery`` queue.
QUEUES: tuple[str, ...] = ("high", "default", "low", "export")
DEFAULT_QUEUE = "default"

# How long a message may wait in each queue before a worker starts it. The
# latency canary (core/tasks.py) measures it every minute, exports it as a metric
# and logs an ERROR when a queue breaches its SLA.
SLA_SECONDS: dict[str, float] = {"high": 1.0, "default": 10.0, "low": 300.0, "export": 60.0}
# --8<-- [end:queues]

# --8<-- [start:routes]
# Routes by task name. Keys are Celery globs matched against the registered task
# name (``<project>.<app>.tasks.<function>``). An exact name wins over every glob;
# globs are tried in order and the first match wins. Route whole modules, and list
# the exceptions above their module's glob. A task that matches nothing fails
# ``manage.py check``.
ROUTES: dict[str, str] = {
    # Exceptions before their module's glob (manage.py check fails one listed after
    # it, topology.E013): the export watchdog must not wait behind (or die with) the
    # export pool it watches; reconciliation, housekeeping and a fan-out's batches
    # are background work.
    "*.exports.tasks.export_watchdog": "default",
    "*.exports.tasks.cleanup_expired_exports": "low",
    "*.imports.tasks.cleanup_expired_imports": "low",
    "*.payments.tasks.reconcile_stuck_payments": "default",
    "*.statements.tasks.build_statement_batch": "low",
    "*.users.tasks.prune_password_resets": "low",
    # Transactional work a user is waiting for: emails, payments.
    "*.users.tasks.*": "high",
    "*.payments.tasks.*": "high",
    # A fan-out (docs/canvas-fan-out.md): its batch tasks wait on low behind everyday
    # work (the exception above); its start, callback and errback run here.
    "*.statements.tasks.*": "default",
    # Long, memory-hungry batch work gets its own patient pool: exports, and an
    # upload's import (a large file is tens of seconds of work, past the 10 s that
    # default promises everyday work).
    "*.exports.tasks.*": "export",
    "*.imports.tasks.*": "export",
    # Housekeeping.
    "*.core.tasks.clear_expired_sessions": "low",
    "*.core.tasks.*": "default",
    "*.outbox.tasks.*": "low",
    # Celery's own tasks (result cleanup, chord synchronisation).
    "celery.*": "default",
}
# --8<-- [end:routes]


@dataclass(frozen=True)
class Pool:
    """How one worker pool is run. One compose service and one Procfile line each."""

    name: str
    queues: tuple[str, ...]
    # Child processes. Transactional pools wait on networks (SMTP, payment APIs),
    # so they can run more processes than cores; export children hold a
    # database cursor and a file each, so keep them few.
    concurrency: int
    # Messages reserved per child. 1 with late acks means a worker holds no more
    # messages than it is executing, so a busy worker never sits on work that
    # an idle one could take.
    prefetch_multiplier: int
    # Seconds. The soft limit raises SoftTimeLimitExceeded inside the task so it
    # can clean up; the hard limit kills the child process.
    soft_time_limit: int
    time_limit: int
    # KiB of resident memory after which a child is replaced once its current
    # task finishes (Celery checks between tasks, it does not kill mid-task).
    max_memory_per_child: int
    # Replace children periodically anyway: cheap insurance against slow leaks.
    max_tasks_per_child: int
    # Seconds the worker lets running tasks finish after SIGTERM (Celery's soft
    # shutdown) before it terminates them and hands their messages back.
    soft_shutdown_timeout: float
    # How many copies of the pool an autoscaler may run: on a cluster, one Deployment
    # per pool scaled by the length of its queues (the blueprint's docs/kubernetes.md).
    # 0 lets a pool scale to zero when its queues are empty, which costs a cold start
    # (a new pod) before the next task: manage.py check refuses it for a queue whose SLA
    # is shorter than that (topology.E014). Compose runs one unless you --scale it.
    min_replicas: int = 1
    max_replicas: int = 4

    @property
    def node(self) -> str:
        """Short node name, e.g. ``high`` for ``worker-high`` (hostname ``high@host``)."""
        return self.name.removeprefix("worker-")

    @property
    def concurrency_env(self) -> str:
        """Environment variable that overrides the concurrency, e.g. ``WORKER_HIGH_CONCURRENCY``."""
        return f"{self.name.upper().replace('-', '_')}_CONCURRENCY"

    def celery_args(self, concurrency: int | None = None, loglevel: str = "INFO", node_prefix: str = "") -> list[str]:
        """Arguments for ``celery`` that start this pool (``node_prefix``: e.g. ``test-123-``)."""
        return [
            "--app=config.celery_app",
            "worker",
            f"--hostname={node_prefix}{self.node}@%h",
            f"--queues={','.join(self.queues)}",
            f"--concurrency={concurrency or self.concurrency}",
            f"--prefetch-multiplier={self.prefetch_multiplier}",
            f"--soft-time-limit={self.soft_time_limit}",
            f"--time-limit={self.time_limit}",
            f"--max-memory-per-child={self.max_memory_per_child}",
            f"--max-tasks-per-child={self.max_tasks_per_child}",
            f"--loglevel={loglevel}",
            # Settings without a command-line flag go after "--" (worker namespace).
            "--",
            f"worker.soft_shutdown_timeout={self.soft_shutdown_timeout}",
        ]


# --8<-- [start:pools]
POOLS: tuple[Pool, ...] = (
    # Fast and strict: an email that has not gone out in 30 s is not going out.
    Pool(
        name="worker-high",
        queues=("high",),
        concurrency=4,
        prefetch_multiplier=1,
        soft_time_limit=25,
        time_limit=30,
        max_memory_per_child=200_000,
        max_tasks_per_child=1000,
        soft_shutdown_timeout=30,
        # Never zero: a password reset cannot wait for a pod to start.
        min_replicas=1,
        max_replicas=10,
    ),
    # Everyday work and the low-priority backlog. With Redis the worker takes every
    # waiting ``default`` message before the next ``low`` one, because the list
    # starts with ``default`` and the transport's queue_order_strategy is
    # "priority" (config/settings/base.py; kombu's default alternates). RabbitMQ
    # has no order between queues: both get about every other slot.
    Pool(
        name="worker-default",
        queues=("default", "low"),
        concurrency=2,
        prefetch_multiplier=1,
        soft_time_limit=270,
        time_limit=300,
        max_memory_per_child=250_000,
        max_tasks_per_child=500,
        soft_shutdown_timeout=60,
        min_replicas=1,
        max_replicas=6,
    ),
    # Patient and memory-capped: few children, long limits. Exports checkpoint
    # every batch, so on shutdown they hand their message back almost at once
    # instead of holding up a deploy.
    Pool(
        name="worker-export",
        queues=("export",),
        concurrency=1,
        prefetch_multiplier=1,
        soft_time_limit=1740,
        time_limit=1800,
        max_memory_per_child=300_000,
        max_tasks_per_child=20,
        soft_shutdown_timeout=5,
        # Exports come in bursts and may wait a minute: no pod while none is queued.
        min_replicas=0,
        max_replicas=4,
    ),
)
# --8<-- [end:pools]


def pool_named(name: str) -> Pool:
    """Return the pool called ``name`` (``worker-high`` or just ``high``)."""
    for pool in POOLS:
        if name in (pool.name, pool.node):
            return pool
    known = ", ".join(pool.name for pool in POOLS)
    raise KeyError(f"unknown worker pool {name!r}; the topology declares: {known}")


def pool_for_queue(queue: str) -> Pool | None:
    """The pool consuming ``queue``, or None when no pool does."""
    return next((pool for pool in POOLS if queue in pool.queues), None)


# Seconds from the first message on an empty queue to a pool scaled to zero taking
# it: the autoscaler's polling interval (15 s), scheduling, pulling the image and
# starting Django and Celery. A queue whose SLA is shorter needs a replica running.
COLD_START_SECONDS: float = 60.0


def longest_time_limit() -> int:
    return max(pool.time_limit for pool in POOLS)


# --8<-- [start:visibility-timeout]
# With the Redis broker a message that was delivered but not acknowledged becomes
# visible again after this many seconds, and with late acks a task is only
# acknowledged when it finishes. If a task could run longer than this, Redis
# would hand it to a second worker while the first is still running it (see
# celery/celery#4400 and #7918). So: twice the longest hard time limit. It is also
# how long a message of a worker that was SIGKILLed waits before redelivery, and it
# must exceed the longest retry countdown (ETA tasks are held unacknowledged).
# RabbitMQ has the same limit under another name: it closes the channel of a
# consumer that holds a delivery unacknowledged longer than its consumer_timeout
# (30 min by default), so the RabbitMQ service in docker-compose sets it to this.
VISIBILITY_TIMEOUT: int = 2 * longest_time_limit()
# --8<-- [end:visibility-timeout]
