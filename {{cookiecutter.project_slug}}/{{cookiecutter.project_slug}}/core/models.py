import base64

from django.db import models
from django.utils import timezone


# --8<-- [start:failed-task]
class FailedTask(models.Model):
    """A task that failed for good: the dead letter an operator acts on.

    Written by ``BaseTask.on_failure`` after the last retry. Replaying sends the
    same task with the same arguments again (routed as usual); the row keeps the
    id of the replay so the outcome can be followed in Flower.
    """

    task_name = models.CharField(max_length=255, db_index=True)
    task_id = models.CharField(max_length=255, unique=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
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

    def __str__(self):
        return f"{self.task_name} {self.task_id}"

    @classmethod
    def record(cls, task, exc, task_id, args, kwargs, einfo):
        from .task_base import queue_of

        failed, _ = cls.objects.update_or_create(
            task_id=task_id,
            defaults={
                "task_name": task.name,
                "args": list(args or []),
                "kwargs": dict(kwargs or {}),
                "queue": queue_of(task.request, task),
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "exception_message": str(exc),
                "traceback": str(einfo) if einfo else "",
                "retries": task.request.retries or 0,
            },
        )
        return failed

    # --8<-- [start:failed-task-replay]
    def replay(self) -> str:
        """Send the task again with the same arguments; returns the new task id."""
        from config.celery_app import app

        task = app.tasks.get(self.task_name)
        if task is not None:  # routed like any other call (and eager in unit tests)
            result = task.apply_async(args=self.args, kwargs=self.kwargs)
        else:  # a task this process does not know: let the broker route it by name
            result = app.send_task(self.task_name, args=self.args, kwargs=self.kwargs)
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
