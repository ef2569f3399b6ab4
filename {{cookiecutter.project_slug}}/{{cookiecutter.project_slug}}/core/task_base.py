"""The base class of every task in the project (``Celery(task_cls=...)``).

One place for what every task needs and nobody should re-implement:

* retry defaults: exponential backoff with jitter, bounded attempts (from
  ``settings.TASK_RETRY_POLICY``). A task opts in to automatic retries by naming
  the exceptions worth retrying: ``@shared_task(autoretry_for=(ProviderTimeout,))``;
* one structured log line per run: task name, id, queue, worker, retries,
  duration and outcome; and the same run counted in the metrics (outcome, and
  duration in a histogram per task and queue: ``core/metrics.py``);
* the dead letter: when a task fails for good (retries exhausted, or an error not
  worth retrying) a ``FailedTask`` row records it for an operator, who can replay
  it from the admin or with ``manage.py failed_tasks replay``;
* a dropped database connection (failover, PgBouncer restart), or a database
  that takes no writes for a while (a primary demoted to a standby), is retried
  on a fresh connection, like any other transient error;
* the hand-back: a task cancelled because the broker connection dropped goes
  back to its queue as soon as the broker answers again (``HandBackRequest``).
"""

import logging
import re
import threading
import time

from celery.contrib.django.task import DjangoTask
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections

logger = logging.getLogger("tasks")

_POLICY = settings.TASK_RETRY_POLICY

# SQLSTATE 25006, read_only_sql_transaction: "cannot execute UPDATE in a read-only
# transaction". What a primary demoted to a standby answers every write (a failover
# under way, a connection pooler still pointing at the old primary), and a database
# an operator set to default_transaction_read_only for maintenance. psycopg raises
# it as InternalError, like a bug in a transaction, but it passes like an outage.
READ_ONLY_SQL_TRANSACTION = "25006"


def database_unavailable(exc: BaseException) -> bool:
    """Is ``exc`` the database being out of reach or read-only for a while, rather than a wrong query?

    "The database connection broke": the server closed it (failover, restart,
    pg_terminate_backend, an idle-connection reaper), or it is unreachable for a
    moment; or "the server takes no writes". Worth a retry for any idempotent
    task, on a new connection: a read-only session stays read-only, and only a
    new one reaches the new primary.
    """
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DatabaseError) and getattr(exc.__cause__, "sqlstate", None) == READ_ONLY_SQL_TRANSACTION


# With RabbitMQ's native delayed delivery a countdown (every retry) travels with
# its delay spelled out in binary in front of the routing key: "0.0.….1.0.high".
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def queue_of(request, task=None) -> str:
    """The queue a task message was delivered from: its routing key, minus any delay prefix.

    Without delivery info (Celery runs the failure hooks of a task killed at its
    hard time limit in the worker's main process, outside the task's request),
    the queue ``task`` is routed to.
    """
    routing_key = (request.delivery_info or {}).get("routing_key") or ""
    if not routing_key and task is not None:
        queue = task.app.amqp.router.route({}, task.name).get("queue")
        return getattr(queue, "name", queue) or ""
    return _DELAY_PREFIX.sub("", routing_key)


# --8<-- [start:hand-back-request]
class HandBackRequest(Request):
    """A task request that hands its message back when the broker connection drops.

    When the connection to the broker is lost, Celery cancels the running
    late-ack tasks (``worker_cancel_long_running_tasks_on_connection_loss``):
    their acknowledgement could not reach the broker anyway, and the broker is
    expected to redeliver them. RabbitMQ does so at once. Redis only emulates
    acknowledgements: the message waits in its ``unacked`` hash, and the worker
    that should put it back had just lost its connection, so it comes back
    after the visibility timeout: an hour for a payment or a password reset
    that was running when Redis restarted (celery/celery#1307). The failure
    drill ``test_redis_restart.py`` of the template shows it.

    So, after the cancel, put the message back into its queue ourselves, on a
    connection of our own that waits for Redis to return. Restoring a delivery
    tag is one Redis transaction that does nothing if the message was already
    acknowledged or restored, so a message is never queued twice (the soft
    shutdown cancels through here too, and its own hand-back then finds nothing
    left to do). Redelivery is safe because every task here is idempotent (late
    acks rely on that already).
    """

    def cancel(self, pool, signal=None, **kwargs):
        try:
            # Terminates the pool process, then records the cancel in the result
            # backend, which fails while the broker (here also the backend) is down.
            super().cancel(pool, signal, **kwargs)
        finally:
            if self.task.acks_late and not self.acknowledged and self.time_start:
                tag = self.message.delivery_tag
                threading.Thread(target=_hand_back, args=(self.task.app, tag, self.id), daemon=True).start()


def _hand_back(app, delivery_tag: str, task_id: str) -> None:
    try:
        with app.connection_for_write() as connection:
            if connection.transport.driver_type != "redis":
                return  # RabbitMQ requeues the unacknowledged messages of a lost connection itself
            # Wait for the broker (a restart takes seconds); give up after about
            # two minutes and leave the message to the visibility timeout.
            connection.ensure_connection(max_retries=60, interval_start=0.5, interval_step=0.5, interval_max=2)
            connection.default_channel.qos.restore_by_tag(delivery_tag)  # to the head of its queue
            logger.warning("task %s: cancelled by the worker, message handed back to its queue", task_id)
    except Exception:
        logger.exception("task %s: could not hand its message back; the visibility timeout will", task_id)
    # --8<-- [end:hand-back-request]


# --8<-- [start:retry-policy]
class BaseTask(DjangoTask):
    # DjangoTask (Celery's default task class under Django) adds delay_on_commit()
    # and apply_async_on_commit(): send the message only after the transaction commits.

    max_retries = _POLICY["max_retries"]
    # Exponential backoff: retry_backoff, 2x, 4x ... seconds, capped, each delay
    # randomised ("full jitter") so that retries after an outage do not arrive in
    # one thundering herd. The cap must stay below the Redis visibility timeout.
    retry_backoff = _POLICY["retry_backoff"]
    retry_backoff_max = _POLICY["retry_backoff_max"]
    retry_jitter = True
    # Delay of a plain self.retry() and of the retry after a killed process
    # (CELERY_TASK_RETRY_ON_WORKER_LOST).
    default_retry_delay = _POLICY["default_retry_delay"]
    # --8<-- [end:retry-policy]
    # Cancelled on a broker connection loss: back to the queue at once, not in an hour.
    Request = HandBackRequest

    # --8<-- [start:database-retry]
    def __call__(self, *args, **kwargs):
        """Run the task; retry it, with the usual backoff, when the database is unavailable.

        Django reconnects at the start of each task (CONN_HEALTH_CHECKS), but a
        connection that dies *during* a task fails every later query of that
        task, including the dead-letter record; and a health check finds nothing
        wrong with a connection to a server that has become read-only. Without
        this a database blip or a failover turns every running task into a
        failure, whose dead letter cannot be written either.
        """
        try:
            return super().__call__(*args, **kwargs)
        except (DatabaseError, InterfaceError) as exc:
            if self.request.is_eager or not database_unavailable(exc):
                raise  # eager: the caller's connection, not ours to fix
            # Throw the connection away, so that this process reconnects (for the
            # dead letter, if retries are exhausted, and for its next task).
            connections.close_all()
            countdown = get_exponential_backoff_interval(
                self.retry_backoff, self.request.retries, self.retry_backoff_max, self.retry_jitter
            )
            logger.warning("task %s[%s]: database unavailable, retrying: %s", self.name, self.request.id, exc)
            raise self.retry(exc=exc, countdown=countdown) from exc
        # --8<-- [end:database-retry]

    # --8<-- [start:run-log]
    def before_start(self, task_id, args, kwargs):
        self.request.started_monotonic = time.monotonic()

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        started = getattr(self.request, "started_monotonic", None)
        duration = time.monotonic() - started if started is not None else 0.0
        queue = queue_of(self.request, self)
        logger.log(
            logging.ERROR if status == "FAILURE" else logging.INFO,
            "task=%s id=%s queue=%s worker=%s retries=%s duration=%.3fs outcome=%s",
            self.name,
            task_id,
            queue,
            self.request.hostname,
            self.request.retries,
            duration,
            status.lower(),
        )
        if not self.request.is_eager:
            try:
                from .metrics import record_task

                record_task(self.name, status.lower(), duration, queue)
            except Exception:
                logger.warning("could not record metrics for %s", self.name, exc_info=True)
                # --8<-- [end:run-log]

    # --8<-- [start:dead-letter]
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Called once a task has failed for good: write the dead-letter record."""
        from .models import FailedTask

        try:
            FailedTask.record(self, exc, task_id, args, kwargs, einfo)
        except Exception:
            # The dead letter must never hide the original failure.
            logger.exception("could not record failed task %s %s", self.name, task_id)
            # --8<-- [end:dead-letter]
