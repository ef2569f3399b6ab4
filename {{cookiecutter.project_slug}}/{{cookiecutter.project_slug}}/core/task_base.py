"""The base class of every task in the project (``Celery(task_cls=...)``).

One place for what every task needs and nobody should re-implement:

* retry defaults: exponential backoff with jitter, bounded attempts (from
  ``settings.TASK_RETRY_POLICY``). A task opts in to automatic retries by naming
  the exceptions worth retrying: ``@shared_task(autoretry_for=(ProviderTimeout,))``;
* one structured log line per run: task name, id, queue, worker, retries,
  duration and outcome;
* the dead letter: when a task fails for good (retries exhausted, or an error not
  worth retrying) a ``FailedTask`` row records it for an operator, who can replay
  it from the admin or with ``manage.py failed_tasks replay``.
"""

import logging
import time

from celery.contrib.django.task import DjangoTask
from django.conf import settings

logger = logging.getLogger("tasks")

_POLICY = settings.TASK_RETRY_POLICY


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

    def before_start(self, task_id, args, kwargs):
        self.request.started_monotonic = time.monotonic()

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        started = getattr(self.request, "started_monotonic", None)
        duration = time.monotonic() - started if started is not None else 0.0
        delivery = self.request.delivery_info or {}
        logger.log(
            logging.ERROR if status == "FAILURE" else logging.INFO,
            "task=%s id=%s queue=%s worker=%s retries=%s duration=%.3fs outcome=%s",
            self.name,
            task_id,
            delivery.get("routing_key"),
            self.request.hostname,
            self.request.retries,
            duration,
            status.lower(),
        )
        if not self.request.is_eager:
            try:
                from .metrics import record_task

                record_task(self.name, status.lower(), duration)
            except Exception:
                logger.warning("could not record metrics for %s", self.name, exc_info=True)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Called once a task has failed for good: write the dead-letter record."""
        from .models import FailedTask

        try:
            FailedTask.record(self, exc, task_id, args, kwargs, einfo)
        except Exception:
            # The dead letter must never hide the original failure.
            logger.exception("could not record failed task %s %s", self.name, task_id)
