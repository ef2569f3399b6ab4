"""System checks that keep the queue topology honest.

Routing mistakes are production incidents: a task routed to a queue that no pool
consumes waits forever, and a task routed to the wrong pool inherits the wrong
time limit. ``manage.py check`` (run in CI, and by Django before ``migrate`` and
``runserver``) catches them before they ship.
"""

from fnmatch import fnmatchcase

from celery.app.routes import prepare
from django.core import checks

from config import topology

TAG = "celery"


def _route_of(routers, task_name: str) -> str | None:
    """The queue the first matching router gives ``task_name``, or None if unrouted."""
    for router in routers:
        route = router(task_name, (), {}, {})
        if route:
            queue = route.get("queue")
            return getattr(queue, "name", queue)
    return None


# --8<-- [start:check-routes]
@checks.register(TAG)
def check_task_routes(app_configs, **kwargs):
    from config.celery_app import app

    # Import every installed app's tasks module now, so the registry is complete.
    # (Not app.loader.import_default_modules(): its Django fixup runs the system
    # checks again, which would recurse into this one.)
    app.autodiscover_tasks(force=True)
    routers = prepare(app.conf.task_routes)
    errors = []
    for name in sorted(app.tasks):
        queue = _route_of(routers, name)
        if queue is None:
            errors.append(
                checks.Error(
                    f"Task {name!r} has no explicit route.",
                    hint="Add a glob for its module (or its exact name) to ROUTES in config/topology.py.",
                    obj=name,
                    id="topology.E001",
                )
            )
        elif queue not in topology.QUEUES:
            errors.append(
                checks.Error(
                    f"Task {name!r} is routed to unknown queue {queue!r}.",
                    hint=f"Route it to one of {', '.join(topology.QUEUES)} or add it to config/topology.py.",
                    obj=name,
                    id="topology.E002",
                )
            )
        else:
            pool = topology.pool_for_queue(queue)
            task_limit = getattr(app.tasks[name], "time_limit", None)
            if pool and task_limit and task_limit > pool.time_limit:
                errors.append(
                    checks.Warning(
                        f"Task {name!r} sets time_limit={task_limit}s but {pool.name} kills tasks after "
                        f"{pool.time_limit}s.",
                        hint="Route it to a pool with a longer limit, or lower the task's limit.",
                        obj=name,
                        id="topology.W001",
                    )
                )
    for routes in _route_maps(app.conf.task_routes):
        errors.extend(_shadowed_routes(list(routes)))
    return errors
    # --8<-- [end:check-routes]


def _route_maps(task_routes) -> list[dict]:
    """The name-to-queue maps among ``task_routes`` (a dict, or a list of routers)."""
    if isinstance(task_routes, dict):
        return [task_routes]
    return [routes for routes in task_routes or () if isinstance(routes, dict)]


def _shadowed_routes(patterns: list[str]) -> list[checks.Error]:
    """A glob listed after a broader one never matches: Celery takes the first glob that does.

    An exact task name cannot be shadowed: Celery looks those up before any glob.
    """
    globs = [pattern for pattern in patterns if "*" in pattern]
    errors = []
    for position, pattern in enumerate(globs):
        broader = next((earlier for earlier in globs[:position] if fnmatchcase(pattern, earlier)), None)
        if broader is not None:
            errors.append(
                checks.Error(
                    f"Route {pattern!r} never applies: {broader!r}, listed before it, matches first.",
                    hint="Move the narrower route above the broader glob in ROUTES (config/topology.py).",
                    obj=pattern,
                    id="topology.E013",
                )
            )
    return errors


# --8<-- [start:check-pools]
@checks.register(TAG)
def check_pools(app_configs, **kwargs):
    from django.conf import settings

    errors = []
    for queue in topology.QUEUES:
        if topology.pool_for_queue(queue) is None:
            errors.append(
                checks.Error(
                    f"Queue {queue!r} has no worker pool consuming it.",
                    hint="Add it to a pool's queues in config/topology.py.",
                    id="topology.E003",
                )
            )
    for pool in topology.POOLS:
        for queue in pool.queues:
            if queue not in topology.QUEUES:
                errors.append(
                    checks.Error(
                        f"Pool {pool.name!r} consumes undeclared queue {queue!r}.",
                        hint="Declare the queue in QUEUES in config/topology.py.",
                        id="topology.E004",
                    )
                )
        # --8<-- [start:soft-below-hard]
        if pool.soft_time_limit >= pool.time_limit:
            errors.append(
                checks.Error(
                    f"Pool {pool.name!r}: soft_time_limit must be below time_limit.",
                    hint="Leave the task time to clean up between the soft and the hard limit.",
                    id="topology.E005",
                )
            )
            # --8<-- [end:soft-below-hard]
        errors += _replica_errors(pool)
    if settings.CELERY_TASK_DEFAULT_QUEUE not in topology.QUEUES:
        errors.append(
            checks.Error(
                f"CELERY_TASK_DEFAULT_QUEUE {settings.CELERY_TASK_DEFAULT_QUEUE!r} is not a declared queue.",
                id="topology.E006",
            )
        )
    errors += _broker_errors()
    return errors


# --8<-- [start:check-replicas]
def _replica_errors(pool: topology.Pool) -> list[checks.Error]:
    """The bounds within which an autoscaler may run copies of a pool."""
    if not 0 <= pool.min_replicas <= pool.max_replicas or pool.max_replicas < 1:
        return [
            checks.Error(
                f"Pool {pool.name!r}: replicas must satisfy 0 <= min_replicas <= max_replicas, max_replicas >= 1"
                f" (got {pool.min_replicas} and {pool.max_replicas}).",
                id="topology.E015",
            )
        ]
    if pool.min_replicas > 0:
        return []
    # Scaled to zero, the pool's next task waits for a pod to start.
    return [
        checks.Error(
            f"Pool {pool.name!r} may scale to zero, but queue {queue!r} must be started within"
            f" {topology.SLA_SECONDS[queue]:g} s, less than a cold start ({topology.COLD_START_SECONDS:g} s).",
            hint="Give the pool min_replicas=1 in config/topology.py, or the queue a longer SLA.",
            id="topology.E014",
        )
        for queue in pool.queues
        if topology.SLA_SECONDS.get(queue, 0) < topology.COLD_START_SECONDS
    ]


# --8<-- [end:check-replicas]


def _broker_errors():
    """Limits that depend on the broker: Redis's visibility timeout, RabbitMQ's delayed delivery."""
    from django.conf import settings

    errors = []
    # --8<-- [start:visibility-above-limits]
    uses_redis = settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    if uses_redis and settings.TASK_RETRY_POLICY["retry_backoff_max"] >= visibility:
        errors.append(
            checks.Error(
                "TASK_RETRY_POLICY['retry_backoff_max'] is not below the visibility timeout: a retry "
                "waiting that long would be redelivered and run twice.",
                hint="Lower retry_backoff_max, or raise the visibility timeout in config/topology.py.",
                id="topology.E008",
            )
        )
    if uses_redis and visibility <= topology.longest_time_limit():
        errors.append(
            checks.Error(
                f"Redis visibility_timeout ({visibility}s) does not exceed the longest hard time limit "
                f"({topology.longest_time_limit()}s): long tasks would be delivered twice.",
                hint="Keep CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'] above every pool's time_limit.",
                id="topology.E007",
            )
        )
    # --8<-- [end:visibility-above-limits]
    uses_amqp = settings.CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://"))
    for queue in settings.CELERY_TASK_QUEUES if uses_amqp else ():
        quorum = (queue.queue_arguments or {}).get("x-queue-type") == "quorum"
        if quorum and queue.exchange.type == "direct":
            errors.append(
                checks.Error(
                    f"Quorum queue {queue.name!r} is bound to a direct exchange: Celery's native delayed "
                    "delivery skips it, so every retry countdown and ETA task would occupy a worker "
                    "process until it is due.",
                    hint="Bind it to a topic exchange, as CELERY_TASK_QUEUES in config/settings/base.py does.",
                    obj=queue.name,
                    id="topology.E012",
                )
            )
    return errors
    # --8<-- [end:check-pools]


# --8<-- [start:check-beat]
@checks.register(TAG)
def check_beat_schedule(app_configs, **kwargs):
    """Every beat entry names a declared queue and expires; every queue has an SLA."""
    from django.conf import settings

    errors = []
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        options = entry.get("options", {})
        if options.get("queue") not in topology.QUEUES:
            errors.append(
                checks.Error(
                    f"Beat entry {name!r} does not name a declared queue.",
                    hint=f"Set the entry's options['queue'] to one of {', '.join(topology.QUEUES)}.",
                    id="topology.E009",
                )
            )
        if not options.get("expire_seconds"):
            errors.append(
                checks.Error(
                    f"Beat entry {name!r} has no expire_seconds: runs missed during an outage would pile up.",
                    hint="Add options['expire_seconds'] below the interval (django-celery-beat ignores 'expires').",
                    id="topology.E010",
                )
            )
    for queue in topology.QUEUES:
        if queue not in topology.SLA_SECONDS:
            errors.append(
                checks.Error(f"Queue {queue!r} has no SLA.", hint="Add it to SLA_SECONDS.", id="topology.E011")
            )
    return errors
    # --8<-- [end:check-beat]
