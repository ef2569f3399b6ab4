"""The Celery application, ``app``: ``celery -A config.celery_app ...``.

All configuration lives in Django settings under the ``CELERY_`` namespace
(see ``config/settings/base.py``); the queue topology lives in ``config/topology.py``.
"""

import os

from celery import Celery, bootsteps, signals

{% if cookiecutter.opentelemetry == "yes" -%}
import config.telemetry  # noqa: F401 -- its signal receivers trace every pool child, and beat
{% endif -%}
from config import healthcheck, topology

# --8<-- [start:app]
# Workers, beat and flower import this module before Django is set up.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Every task gets retry defaults, structured logs and the dead-letter record
# from one base class.
app = Celery("{{ cookiecutter.project_slug }}", task_cls="{{ cookiecutter.project_slug }}.core.task_base:BaseTask")

# ``CELERY_TASK_ROUTES`` in settings becomes ``task_routes`` here, and so on.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Import ``<app>/tasks.py`` of every installed Django app.
app.autodiscover_tasks()
# --8<-- [end:app]


# --8<-- [start:heartbeat]
class HeartbeatFile(bootsteps.StartStopStep):
    """Touch ``<pool>.heartbeat`` from the worker's own timer, for the compose healthcheck.

    The timer runs in the worker's main event loop: if the loop hangs, the file
    goes stale and ``python -m config.healthcheck <pool>`` fails. The same beat
    goes to Redis for Prometheus (``celery_worker_pool_heartbeat_timestamp_seconds``),
    where an alert sees a pool with no worker left at all, which no container
    healthcheck can: written off the loop, and a failed write never stops the worker.
    """

    requires = {"celery.worker.components:Timer"}

    def start(self, worker):
        # high@host, or test-123-high@host in the test suite (config/worker.py).
        node = worker.hostname.split("@")[0].removeprefix(os.environ.get("WORKER_NODE_PREFIX", ""))
        try:
            self.process = topology.pool_named(node).name
        except KeyError:
            self.process = f"worker-{node}"
        from {{ cookiecutter.project_slug }}.core.metrics import pool_heartbeat  # needs Django, set up by now

        self.stamp = pool_heartbeat(self.process)
        self.beat()
        self.tref = worker.timer.call_repeatedly(healthcheck.HEARTBEAT_INTERVAL, self.beat)

    def beat(self):
        healthcheck.touch(self.process)
        self.stamp()

    def stop(self, worker):
        if getattr(self, "tref", None):
            self.tref.cancel()
        healthcheck.heartbeat_file(self.process).unlink(missing_ok=True)

    terminate = stop  # cold and soft shutdowns terminate steps instead of stopping them


app.steps["worker"].add(HeartbeatFile)
# --8<-- [end:heartbeat]


# --8<-- [start:database-connections]
@signals.task_prerun.connect
@signals.task_postrun.connect
def close_old_database_connections(sender=None, **kwargs):
    """Around every task, what Django does around every request: ``close_old_connections``.

    A connection is kept across tasks (CELERY_DB_REUSE_MAX in settings stops Celery's
    Django fixup from closing it after each one), and here closed when a query broke it or
    it outlived CONN_MAX_AGE. This also re-arms CONN_HEALTH_CHECKS: the task's first query
    checks a reused connection and replaces it if the database dropped it meanwhile (a
    restart, a failover, pg_terminate_backend, an idle-connection reaper). A pool child
    holds at most one connection per database alias.
    """
    if getattr(sender.request, "is_eager", False):
        return  # an eager task runs inside its caller's connection (and test transaction)
    from django.db import close_old_connections

    close_old_connections()


# --8<-- [end:database-connections]


# --8<-- [start:declare-every-queue]
@signals.worker_init.connect
def declare_every_queue(sender, **kwargs):
    """RabbitMQ: declare every queue of the topology, not only this pool's, at start.

    With quorum queues each worker binds every declared queue to Celery's delayed
    delivery exchanges when it starts. In a fresh vhost the exchange of a queue
    whose pool has not started yet does not exist, the binding fails (a CRITICAL
    log line), and until that pool starts a countdown sent to its queue would be
    dropped at the end of its delay. Declaring is idempotent. Redis needs none of it.
    """
    with app.connection_for_write() as connection:
        if connection.transport.driver_type != "amqp":
            return
        connection.ensure_connection(max_retries=10)
        for queue in app.amqp.queues.values():
            queue.bind(connection.default_channel).declare()
    # --8<-- [end:declare-every-queue]
