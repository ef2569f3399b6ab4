"""Poison messages: what arrives on a task queue but can never run as a task.

A message naming a task no worker knows (a deploy that renamed it, a producer
on a newer release), a body that is not the JSON its content type claims, a
content type the workers refuse (pickle, from a misconfigured client): Celery
logs each of them once and drops it. Nobody reads that log line in time, and
the work the message stood for is gone.

``DeadLetterConsumer`` is the worker's consumer (``CELERY_WORKER_CONSUMER``)
with Celery's four hooks for such messages extended: each first writes a
``PoisonMessage`` row with the raw message and the reason, then lets Celery do
what it always did (log it; for an unknown task, mark the task id FAILURE in
the result backend) and finish the message on the broker, so that it is not
redelivered for ever. The worker goes on consuming.
"""

import base64
import functools
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from celery.exceptions import NotRegistered
from celery.worker.consumer import Consumer
from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import ContentDisallowed

from .task_base import database_unavailable, queue_of

logger = logging.getLogger(__name__)

# Headers and properties that differ between two deliveries of the same message.
_PER_DELIVERY = {"delivery_tag", "delivery_info", "redelivered", "x-delivery-count", "x-death"}


def _jsonable(value):
    """Headers and properties as JSON: AMQP tables may hold bytes, decimals, timestamps."""
    return _without_nul(json.loads(json.dumps(value, default=str)))


def _without_nul(value):
    """Postgres stores no NUL character, in text or in JSON: it becomes U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def _body_bytes(body) -> bytes:
    if body is None:
        return b""
    return body.encode("utf-8", errors="surrogateescape") if isinstance(body, str) else bytes(body)


def describe(message, reason: str, exc: BaseException | None, hostname: str = "") -> dict:
    """The fields of a ``PoisonMessage`` for a kombu message, without decoding its body."""
    raw = _body_bytes(message.body)
    kept = raw[: settings.POISON_MESSAGE_BODY_LIMIT]
    try:
        body, body_encoding = kept.decode("utf-8"), "text"
        if "\x00" in body:  # valid UTF-8, but Postgres text cannot hold it
            raise UnicodeDecodeError("utf-8", kept, 0, 1, "NUL character")
    except UnicodeDecodeError:  # bytes (pickle, msgpack), or text cut mid-character by the limit
        body, body_encoding = base64.b64encode(kept).decode("ascii"), "base64"
    headers = _jsonable(dict(message.headers or {}))
    properties = _jsonable({k: v for k, v in (message.properties or {}).items() if k != "application_headers"})
    delivery_info = message.delivery_info or {}
    # Identity of the message for de-duplication: all of it except what a redelivery changes.
    identity = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": {key: value for key, value in headers.items() if key not in _PER_DELIVERY},
        "properties": {key: value for key, value in properties.items() if key not in _PER_DELIVERY},
        "routing_key": delivery_info.get("routing_key"),
        "body": hashlib.sha256(raw).hexdigest(),
    }
    return {
        "reason": reason,
        "task_name": str(headers.get("task") or "")[:255],
        "task_id": str(headers.get("id") or "")[:255],
        "queue": queue_of(message)[:64],
        "exchange": str(delivery_info.get("exchange") or "")[:255],
        "routing_key": str(delivery_info.get("routing_key") or "")[:255],
        "content_type": (message.content_type or "")[:255],
        "content_encoding": (message.content_encoding or "")[:64],
        "headers": headers,
        "properties": properties,
        "body": body,
        "body_encoding": body_encoding,
        "body_size": len(raw),
        "body_truncated": len(kept) < len(raw),
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}" if exc else "",
        "exception_message": str(exc) if exc else "",
        "worker": hostname,
        "fingerprint": hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest(),
    }


def record(message, reason: str, exc: BaseException | None, hostname: str = ""):
    """Write (or count again) the ``PoisonMessage`` of ``message``; return the row."""
    from .models import PoisonMessage

    fields = describe(message, reason, exc, hostname)
    # Django reconnects per request or task; this thread has neither, so drop a
    # connection that broke since the last poison message before using it.
    close_old_connections()
    try:
        poison, created = PoisonMessage.objects.get_or_create(fingerprint=fields.pop("fingerprint"), defaults=fields)
        if not created:  # the same message again: redelivered, or sent twice
            PoisonMessage.objects.filter(pk=poison.pk).update(
                deliveries=F("deliveries") + 1, last_seen_at=timezone.now()
            )
    except Exception as error:
        if database_unavailable(error):
            # A new connection for the next attempt: the health check above keeps
            # one to a server that became read-only, and it stays read-only.
            connections.close_all()
        raise
    return poison


@functools.cache
def _writer() -> ThreadPoolExecutor:
    """One thread writes the records, created on first use in the worker's main process.

    So that a database that hangs (a network partition, a lock) holds up the
    consumer for POISON_MESSAGE_RECORD_TIMEOUT at most, not for ever.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="poison-writer")


def _record_in_writer(message, reason, exc, hostname):
    future = _writer().submit(record, message, reason, exc, hostname)
    return future.result(timeout=settings.POISON_MESSAGE_RECORD_TIMEOUT)


# --8<-- [start:consumer]
# --8<-- [start:consumer-hooks]
class DeadLetterConsumer(Consumer):
    """The worker's consumer, recording every message it cannot run before letting it go.

    These hooks run in the worker's main thread, the one that receives every
    message of the pool, and before the message is acknowledged: the row is
    committed first, then the message leaves the broker. No window in which a
    crash loses both.
    """

    def on_unknown_task(self, body, message, exc):
        # exc is the KeyError of the task registry lookup: say what it means.
        name = (message.headers or {}).get("task", "?")
        if self._dead_letter(message, "unknown_task", NotRegistered(name)):
            self._finish(super().on_unknown_task, message, body, message, exc)

    def on_unknown_message(self, body, message):
        if self._dead_letter(message, "not_a_task", None):
            self._finish(super().on_unknown_message, message, body, message)

    def on_invalid_task(self, body, message, exc):
        reason = "content_disallowed" if isinstance(exc, ContentDisallowed) else "invalid_task"
        if self._dead_letter(message, reason, exc):
            self._finish(super().on_invalid_task, message, body, message, exc)

    def on_decode_error(self, message, exc):
        reason = "content_disallowed" if isinstance(exc, ContentDisallowed) else "decode_error"
        if self._dead_letter(message, reason, exc):
            self._finish(super().on_decode_error, message, message, exc)
            # --8<-- [end:consumer-hooks]

    def _dead_letter(self, message, reason, exc) -> bool:
        """Record the message; True once it is safe to let it go."""
        try:
            poison = _record_in_writer(message, reason, exc, self.hostname)
        except Exception as error:
            if not (isinstance(error, FutureTimeout) or database_unavailable(error)):
                return self._drop(message, reason)
            # The database is down, hangs, or takes no writes (a primary demoted
            # during a failover). Dropping the message now would lose it: the
            # log line is all that would be left. Keep it on the broker instead
            # and try again later: requeued after a pause (not at once, which
            # would spin on it for as long as the outage lasts). Until then it
            # holds one prefetch slot of this worker, and the tasks it would let
            # in need the same database anyway. (RabbitMQ 4 quorum queues drop a
            # message requeued 20 times: 20 pauses of outage.)
            delay = settings.POISON_MESSAGE_REQUEUE_DELAY
            logger.critical(
                "could not record a poison message (%s), the database is unavailable; back to its queue in %ss:%s",
                reason,
                delay,
                self._message_report(message.body, message),
                exc_info=True,
            )
            self.timer.call_after(delay, self._requeue, (message,))
            return False
        logger.error("poison message on queue %r (%s) recorded as PoisonMessage %s", poison.queue, reason, poison.pk)
        return True

    def _drop(self, message, reason) -> bool:
        """Let the message go after a CRITICAL line with all of it (called while handling the error).

        Anything but an unavailable database (a bug, a value the database
        refuses) fails the same way on every redelivery: requeueing would loop
        for ever. So it is dropped, as Celery would.
        """
        logger.critical(
            "could not record a poison message (%s); dropping it:%s",
            reason,
            self._message_report(message.body, message),
            exc_info=True,
        )
        return True

    def _finish(self, handler, message, *args):
        """Celery's own handling (log, result backend, events), and the message done on the broker.

        Celery rejects these messages without requeue: for the broker that is an
        acknowledgement (RabbitMQ also routes a rejected message to the queue's
        dead-letter exchange, if an operator configured one).
        """
        try:
            handler(*args)
        except Exception:
            # E.g. an unknown task without an id header: Celery's handler itself fails.
            logger.exception("Celery could not handle the poison message; acknowledging it")
        if not message.acknowledged:
            message.ack_log_error(logger, self.connection_errors)

    def _requeue(self, message):
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors, requeue=True)
            # --8<-- [end:consumer]
