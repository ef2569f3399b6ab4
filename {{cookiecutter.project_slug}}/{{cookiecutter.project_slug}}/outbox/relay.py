"""Writing outbox rows, and publishing them: right after the commit, and from the relay.

Two publishers, one rule. The request publishes its own rows right after its
COMMIT (``publish_after_commit``), so the normal path adds no latency; the
``outbox-relay`` process (``manage.py outbox_relay``) publishes whatever is left:
rows whose immediate attempt failed because the broker was down, and rows of a
process that died between its COMMIT and its publish. Both take each row with
``SELECT ... FOR UPDATE SKIP LOCKED`` and mark it sent in the same transaction,
so two publishers never publish the same row at the same time.

What is left is the window between "the broker took the message" and "our UPDATE
committed": a crash there publishes the row again, with the same task id. That is
at-least-once publishing; the tasks are idempotent, so the effect is once.
"""

import logging
import threading
import time

from django.conf import settings
from django.db import transaction
{%- if cookiecutter.opentelemetry == "yes" %}
from django.db.models.signals import pre_save
{%- endif %}
from django.db.transaction import TransactionManagementError
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerOperationalError

from config.celery_app import app
{%- if cookiecutter.opentelemetry == "yes" %}
from config.telemetry import continue_trace, trace_context
{%- endif %}

from .models import OutboxMessage

logger = logging.getLogger(__name__)


def route_of(task_name: str) -> str:
    """The queue the topology routes ``task_name`` to (an unknown queue raises here, in the caller)."""
    queue = app.amqp.router.route({}, task_name).get("queue")
    return getattr(queue, "name", queue) or settings.CELERY_TASK_DEFAULT_QUEUE


# --8<-- [start:enqueue]
def enqueue(task, args, kwargs) -> OutboxMessage:
    """``outbox.send()``: one INSERT in the caller's transaction, one publish after its COMMIT."""
    if not transaction.get_connection().in_atomic_block:
        # In autocommit the business row has committed already, without its message:
        # exactly the gap the outbox exists to close.
        raise TransactionManagementError(
            "outbox.send() must run inside transaction.atomic(), in the transaction that writes the rows "
            "the task is about"
        )
    message = OutboxMessage.objects.create(
        task_name=task.name, args=list(args), kwargs=dict(kwargs), queue=route_of(task.name)
    )
    # robust: a failure in the hook is logged, never turned into an error page for
    # a request whose data has committed. The relay publishes the row anyway.
    transaction.on_commit(lambda: publish_after_commit(message.pk), robust=True)
    return message
    # --8<-- [end:enqueue]


# ------------------------------------------------------------------------------
# A broker connection that gives up fast.
# ------------------------------------------------------------------------------
_pool = None
_pool_lock = threading.Lock()


# --8<-- [start:fast-connection]
def _connections():
    """This process's pool of publishing connections, with every wait bounded.

    Celery's own defaults are built for workers, which should wait for the broker:
    with Redis down, ``apply_async`` keeps reconnecting for ``broker_connection_timeout``
    (4 s), and first subscribes to the task's result in the Redis result backend,
    which retries 20 times a second apart (the 19 s a checkout used to hang).
    Here: one connection attempt, socket operations bounded by
    ``OUTBOX_PUBLISH_TIMEOUT``, no publish retry, no result subscription.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            timeout = settings.OUTBOX_PUBLISH_TIMEOUT
            options = dict(app.conf.broker_transport_options or {}, max_retries=0)
            connection = app.connection_for_write(connect_timeout=timeout)
            if connection.transport.driver_type == "redis":
                options |= {"socket_connect_timeout": timeout, "socket_timeout": timeout}
            else:  # py-amqp
                options |= {"read_timeout": timeout, "write_timeout": timeout}
            connection = app.connection_for_write(connect_timeout=timeout, transport_options=options)
            # A limit, so that connections are kept and reused (kombu closes every
            # connection of an unlimited pool on release); Celery's pool size.
            _pool = connection.Pool(limit=app.conf.broker_pool_limit or 10)
        return _pool


def reset_connections() -> None:
    """Forget the pool (a new broker URL in tests; after fork the pool is rebuilt lazily)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.force_close_all()
        _pool = None
        # --8<-- [end:fast-connection]


def _publish(message: OutboxMessage, connection) -> None:
    options = {
        # The same id on every publish of this row: a repeat is recognisable.
        "task_id": str(message.task_id),
        "queue": message.queue,
        "connection": connection,
        # Fail now instead of reconnecting in a loop; the relay tries again later.
        "retry": False,
        # Nobody waits on the result of an outbox message (the rows are the outcome),
        # and with a Redis result backend sending would first subscribe to it.
        "ignore_result": True,
    }
{%- if cookiecutter.opentelemetry == "yes" %}
    # Published inside the trace of the request that wrote the row (config/telemetry.py):
    # the message's traceparent makes the task's spans children of that request's.
    with continue_trace(message.trace_context):
        _send(message, options)
{%- else %}
    _send(message, options)
{%- endif %}


def _send(message: OutboxMessage, options: dict) -> None:
    task = app.tasks.get(message.task_name)
    if task is not None:  # routed and sent as usual (and run eagerly in unit tests)
        task.apply_async(message.args, message.kwargs, **options)
    else:  # a task this process does not know: let the broker route it by name
        app.send_task(message.task_name, message.args, message.kwargs, **options)


def _is_broker_down(error: Exception, connection) -> bool:
    return isinstance(error, (BrokerOperationalError, OSError, *connection.connection_errors))


# --8<-- [start:publish]
def publish_rows(rows, batch_size: int) -> tuple[int, bool]:
    """Publish up to ``batch_size`` unsent rows of ``rows``; return (published, broker_down).

    The rows stay locked (SKIP LOCKED: other publishers pass them over) until their
    ``sent_at`` commits with the same transaction. A failed row gets ``attempts`` + 1
    and ``last_error`` and stays unsent; when the broker is down the pass stops at
    the first failure instead of waiting on every row.
    """
    with transaction.atomic():
        database = transaction.get_connection()
        if database.vendor == "postgresql":
            # Marking rows sent need not wait for the disk: if the database crashed
            # and lost this commit, the rows would be published again with the same
            # task ids, which the idempotent tasks absorb. Saves a flush per publish.
            with database.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        batch = list(rows.select_for_update(skip_locked=True).filter(sent_at__isnull=True).order_by("id")[:batch_size])
        if not batch:
            return 0, False
        sent, broker_down = [], False
        # Every connection busy (more threads than the pool): wait no longer than a publish would.
        with _connections().acquire(block=True, timeout=settings.OUTBOX_PUBLISH_TIMEOUT) as connection:
            for message in batch:
                try:
                    _publish(message, connection)
                except Exception as error:
                    message.attempts += 1
                    message.last_error = f"{type(error).__name__}: {error}"[:2000]
                    message.save(update_fields=["attempts", "last_error"])
                    broker_down = _is_broker_down(error, connection)
                    connection.collect()  # drop a broken connection; its next use reconnects
                    if broker_down:
                        break
                    logger.exception("outbox: could not publish message %s (%s)", message.pk, message.task_name)
                    continue
                sent.append(message.pk)
        OutboxMessage.objects.filter(pk__in=sent).update(sent_at=timezone.now())
    return len(sent), broker_down
    # --8<-- [end:publish]


# --8<-- [start:publish-after-commit]
# While the broker is known to be down, requests do not even try: each attempt
# could cost up to OUTBOX_PUBLISH_TIMEOUT, and the relay has the rows anyway.
_broker_down_until = 0.0


def publish_after_commit(message_id: int) -> None:
    """The immediate attempt, run by ``on_commit``: publish this row now if the broker answers."""
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return
    try:
        _, broker_down = publish_rows(OutboxMessage.objects.filter(pk=message_id), batch_size=1)
    except Exception:
        logger.exception("outbox: immediate publish of message %s failed; the relay will send it", message_id)
        return
    if broker_down:
        _broker_down_until = time.monotonic() + settings.OUTBOX_BROKER_DOWN_BACKOFF
        logger.warning("outbox: broker unavailable, message %s left to the relay", message_id)
    # --8<-- [end:publish-after-commit]


def relay_pending(batch_size: int | None = None) -> tuple[int, bool]:
    """The relay's pass: publish every unsent row. Returns (published, broker_down)."""
    batch_size = batch_size or settings.OUTBOX_RELAY_BATCH_SIZE
    total = 0
    while True:
        published, broker_down = publish_rows(OutboxMessage.objects.all(), batch_size)
        total += published
        if broker_down or published < batch_size:
            return total, broker_down


def unsent_args(task) -> set:
    """The first argument (an id) of every unsent message of ``task``: work that is still on its way."""
    rows = OutboxMessage.objects.filter(task_name=task.name, sent_at__isnull=True).values_list("args", flat=True)
    return {args[0] for args in rows if args}
{%- if cookiecutter.opentelemetry == "yes" %}


# --8<-- [start:save-trace-context]
def save_trace_context(sender, instance: OutboxMessage, **kwargs) -> None:
    """A new row saves the trace it is written in, the request's: ``_publish`` publishes it in that trace."""
    if instance._state.adding and not instance.trace_context:
        instance.trace_context = trace_context()


# Every row enqueue() writes: this module is imported before the first one (outbox.send).
pre_save.connect(save_trace_context, sender=OutboxMessage)
# --8<-- [end:save-trace-context]
{%- endif %}
