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
        # --8<-- [end:failed-task]
