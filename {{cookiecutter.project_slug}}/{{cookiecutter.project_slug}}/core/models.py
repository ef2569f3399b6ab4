import base64
import hashlib
import json

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Max
from django.utils import timezone
from kombu.utils import json as kombu_json

# A cut argument keeps this many characters of its JSON, for the operator to recognise it.
ARGUMENT_HEAD = 1024


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _size(value) -> int:
    """Bytes of ``value`` as JSON, about what Postgres stores of it."""
    return len(_json(value).encode())


def _cut(value, size: int) -> dict:
    """What stands in for an argument too large to keep: its size and the start of its JSON."""
    return {"__truncated__": True, "size": size, "head": _json(value)[:ARGUMENT_HEAD]}


def cap_arguments(args, kwargs, limit: int) -> tuple[list, dict, int, bool]:
    """A task's arguments as a dead letter keeps them: ``(args, kwargs, size, truncated)``.

    As JSON the way Celery's serializer writes them, so that a Decimal, a datetime
    or a UUID is kept (and replayed) as what it was. If they take more than
    ``limit`` bytes, the largest arguments are replaced, one by one, by a marker
    (``_cut``) until the rest fits: the small ones (an order id) stay readable.
    ``size`` is the size of all of them, as received.
    """
    received = json.loads(kombu_json.dumps([list(args or []), dict(kwargs or {})]))
    size = _size(received)
    if size <= limit:
        return *received, size, False
    args, kwargs = json.loads(_json(received))  # a copy to cut from
    slots = [(args, index, _size(value)) for index, value in enumerate(args)]
    slots += [(kwargs, key, _size(value)) for key, value in kwargs.items()]
    excess = size - limit
    for container, key, value_size in sorted(slots, key=lambda slot: slot[2], reverse=True):
        if excess <= 0:
            break
        marker = _cut(container[key], value_size)
        if value_size <= _size(marker):
            break  # only small arguments left: cutting them would not make it smaller
        container[key] = marker
        excess -= value_size - _size(marker)
    if excess > 0:  # thousands of small arguments: cut them all, as one
        args, kwargs = [_cut(received, size)], {}
    return args, kwargs, size, True


def _cut_text(text: str, limit: int, keep: str = "start") -> str:
    """``text`` within ``limit`` characters, saying what was cut; without NUL, which Postgres refuses."""
    text = text.replace("\x00", "\ufffd")
    if len(text) <= limit:
        return text
    if keep == "end":  # a traceback: the end says where it failed
        return f"[... {len(text) - limit} characters cut ...]\n{text[-limit:]}"
    return f"{text[:limit]}\n[... {len(text) - limit} characters cut ...]"


def hash_task_id(task_id: str) -> str:
    return hashlib.sha256(task_id.encode()).hexdigest()


# --8<-- [start:failed-task]
class FailedTask(models.Model):
    """A task that failed for good: the dead letter an operator acts on.

    Written by ``BaseTask.on_failure`` after the last retry, one row per failure:
    a task id that fails twice (a producer that reuses ids, a message delivered
    twice) gets a second row (``failure`` 2), with its own arguments and error.
    Replaying sends the same task with the same arguments again (routed as usual);
    the row keeps the id of the replay so the outcome can be followed in Flower.
    """

    task_name = models.CharField(max_length=255, db_index=True)
    # Any length: Celery sets no limit on a task id (apply_async(task_id=...)).
    task_id = models.TextField()
    # The n-th failure recorded for this task id.
    failure = models.PositiveIntegerField(default=1)
    # sha256 of task_id, set by save(): (task id, failure) is unique on it, because
    # an index on the id itself would refuse a very long one (Postgres: 2,704 bytes).
    task_id_hash = models.CharField(max_length=64, editable=False)
    # At most FAILED_TASK_ARGUMENTS_LIMIT bytes of JSON (cap_arguments):
    # arguments_size is the size of all of them, arguments_truncated says when
    # some were cut. A record with cut arguments cannot be replayed.
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    arguments_size = models.PositiveIntegerField(default=0)
    arguments_truncated = models.BooleanField(default=False)
    queue = models.CharField(max_length=64, blank=True)
    exception_type = models.CharField(max_length=255)
    exception_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    retries = models.PositiveIntegerField(default=0)
    failed_at = models.DateTimeField(default=timezone.now, db_index=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_task_id = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-failed_at"]
        constraints = [
            models.UniqueConstraint(fields=["task_id_hash", "failure"], name="core_failedtask_one_row_per_failure")
        ]

    def __str__(self):
        return f"{self.task_name} {self.task_id}" + (f" (failure {self.failure})" if self.failure > 1 else "")

    def save(self, *args, **kwargs):
        self.task_id_hash = hash_task_id(self.task_id)
        super().save(*args, **kwargs)

    @classmethod
    def record(cls, task, exc, task_id, args, kwargs, einfo):
        from .task_base import queue_of

        limit = settings.FAILED_TASK_ARGUMENTS_LIMIT
        args, kwargs, size, truncated = cap_arguments(args, kwargs, limit)
        fields = {
            "task_name": task.name,
            "task_id": task_id,
            "args": args,
            "kwargs": kwargs,
            "arguments_size": size,
            "arguments_truncated": truncated,
            "queue": queue_of(task.request, task)[:64],
            "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}"[:255],
            "exception_message": _cut_text(str(exc), limit),
            "traceback": _cut_text(str(einfo), limit, keep="end") if einfo else "",
            "retries": task.request.retries or 0,
        }
        earlier = cls.objects.filter(task_id_hash=hash_task_id(task_id))
        for attempt in range(3):
            failure = (earlier.aggregate(last=Max("failure"))["last"] or 0) + 1
            try:
                with transaction.atomic():
                    return cls.objects.create(failure=failure, **fields)
            except IntegrityError:  # another failure of this id was recorded meanwhile: take the next number
                if attempt == 2:
                    raise

    def arguments(self) -> tuple[list, dict]:
        """``(args, kwargs)`` as the task received them: a Decimal as a Decimal (Celery's JSON markers)."""
        return tuple(json.loads(_json([self.args, self.kwargs]), object_hook=kombu_json.object_hook))

    # --8<-- [start:failed-task-replay]
    def replay(self) -> str:
        """Send the task again with the same arguments; returns the new task id."""
        from config.celery_app import app

        if self.arguments_truncated:
            raise ValueError(
                f"its arguments were cut to fit the record ({self.arguments_size} bytes in all): "
                "replaying it would send other arguments"
            )
        args, kwargs = self.arguments()
        task = app.tasks.get(self.task_name)
        if task is not None:  # routed like any other call (and eager in unit tests)
            result = task.apply_async(args=args, kwargs=kwargs)
        else:  # a task this process does not know: let the broker route it by name
            result = app.send_task(self.task_name, args=args, kwargs=kwargs)
        self.replayed_at = timezone.now()
        self.replay_task_id = result.id
        self.save(update_fields=["replayed_at", "replay_task_id"])
        return result.id
        # --8<-- [end:failed-task-replay]
        # --8<-- [end:failed-task]


# --8<-- [start:poison-reasons]
class PoisonMessage(models.Model):
    """A message on a task queue that no worker can run: the dead letter of the transport.

    An unknown task name, a body that does not decode, a content type the workers
    refuse (pickle): Celery logs these and drops them. ``core.poison`` records
    them here first, with the raw message, so that an operator sees them in the
    admin and with ``manage.py poison_messages``. One row per distinct message
    (``fingerprint``); a redelivery of it only counts in ``deliveries``.
    """

    class Reason(models.TextChoices):
        UNKNOWN_TASK = "unknown_task", "unknown task name"
        DECODE_ERROR = "decode_error", "body does not decode"
        CONTENT_DISALLOWED = "content_disallowed", "content type not accepted"
        INVALID_TASK = "invalid_task", "invalid task message"
        NOT_A_TASK = "not_a_task", "not a task message"
        # --8<-- [end:poison-reasons]

    class BodyEncoding(models.TextChoices):
        TEXT = "text", "UTF-8 text"
        BASE64 = "base64", "base64 of the bytes"

    reason = models.CharField(max_length=32, choices=Reason.choices, db_index=True)
    task_name = models.CharField(max_length=255, blank=True, db_index=True)
    task_id = models.CharField(max_length=255, blank=True)
    queue = models.CharField(max_length=64, blank=True)
    exchange = models.CharField(max_length=255, blank=True)
    routing_key = models.CharField(max_length=255, blank=True)
    content_type = models.CharField(max_length=255, blank=True)
    content_encoding = models.CharField(max_length=64, blank=True)
    headers = models.JSONField(default=dict)
    properties = models.JSONField(default=dict)
    # The body as received, at most POISON_MESSAGE_BODY_LIMIT bytes of it: text
    # when it is valid UTF-8, else base64. body_size is the size of the whole body.
    body = models.TextField(blank=True)
    body_encoding = models.CharField(max_length=8, choices=BodyEncoding.choices, default=BodyEncoding.TEXT)
    body_size = models.PositiveIntegerField(default=0)
    body_truncated = models.BooleanField(default=False)
    exception_type = models.CharField(max_length=255, blank=True)
    exception_message = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True)
    # sha256 of the message minus what changes between deliveries (delivery tag, redelivery headers).
    fingerprint = models.CharField(max_length=64, unique=True)
    deliveries = models.PositiveIntegerField(default=1)
    first_seen_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_seen_at = models.DateTimeField(default=timezone.now)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-first_seen_at"]

    def __str__(self):
        return f"{self.get_reason_display()}: {self.task_name or self.content_type or '?'} on {self.queue or '?'}"

    def raw_body(self) -> bytes:
        """The stored body as bytes (all of it unless ``body_truncated``)."""
        if self.body_encoding == self.BodyEncoding.BASE64:
            return base64.b64decode(self.body)
        return self.body.encode()

    # --8<-- [start:poison-replay]
    def replay(self) -> None:
        """Publish the message again, unchanged, to its queue: for a task deployed since.

        Only an unknown task can become runnable; a body that did not decode
        will not decode the next time either.
        """
        from config.celery_app import app

        if self.reason != self.Reason.UNKNOWN_TASK:
            raise ValueError(f"a message rejected for {self.get_reason_display()!r} cannot be replayed")
        if self.body_truncated:
            raise ValueError("only part of the body was kept; it cannot be sent again")
        if self.task_name not in app.tasks:
            raise ValueError(f"task {self.task_name!r} is still unknown here: deploy it first")
        queue = app.amqp.queues[self.queue]
        headers = {key: value for key, value in self.headers.items() if not key.startswith("x-")}
        with app.producer_or_acquire() as producer:
            producer.publish(
                self.raw_body(),
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                headers=headers,
                content_type=self.content_type,
                content_encoding=self.content_encoding,
                **{key: self.properties[key] for key in ("correlation_id", "reply_to") if self.properties.get(key)},
            )
        self.replayed_at = timezone.now()
        self.save(update_fields=["replayed_at"])
        # --8<-- [end:poison-replay]
