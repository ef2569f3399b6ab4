import uuid

from django.db import models
from django.db.models import Q


class OutboxMessage(models.Model):
    """A task the application has decided to send: committed with the rows it is about.

    Written by ``outbox.send()`` inside the caller's transaction and published to the
    broker after the commit, by the request itself when the broker answers at once,
    otherwise by the ``outbox-relay`` process. ``sent_at`` is set once the broker has
    taken the message.
    """

    task_name = models.CharField(max_length=255)
    # JSON, like the message itself (CELERY_ACCEPT_CONTENT = ["json"]): a row that
    # could not be encoded fails in the request, not later in the relay.
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    # Where the topology routes the task (config/topology.py), recorded for operators.
    queue = models.CharField(max_length=64)
    # The Celery task id of the message, fixed when the row is written: a relay that
    # crashes after publishing and before marking the row sent publishes it again
    # with the same id, and the idempotent task turns the repeat into a no-op.
    task_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Failed publish attempts, and the last error (the broker was down, usually).
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # The W3C trace context (traceparent) of the request that wrote the row, when the
    # project traces: the message is published inside that trace, even by the relay.
    trace_context = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The relay's query: unsent rows in order. Partial, so it stays as small as
            # the backlog however many sent rows the table keeps.
            models.Index(fields=["id"], condition=Q(sent_at__isnull=True), name="outbox_unsent_idx"),
        ]

    def __str__(self):
        return f"{self.task_name}{tuple(self.args)} ({'sent' if self.sent_at else 'unsent'})"
