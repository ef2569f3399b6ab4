import logging
import time
from importlib import import_module

import redis
from celery import shared_task
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db.models import QuerySet
from django.utils import timezone

from config import topology

from . import metrics

logger = logging.getLogger(__name__)


# --8<-- [start:canary]
@shared_task
def dispatch_latency_probes(dry_run: bool = False) -> list[str]:
    """Send one probe to every queue (beat, every minute): the queue-latency canary."""
    if not dry_run:
        for queue in topology.QUEUES:
            # queue= overrides the route: the probe waits in line like real work. The
            # probe records its own figure; nobody reads its Celery result.
            probe_queue_latency.apply_async((queue, time.time()), queue=queue, expires=300, ignore_result=True)
    return list(topology.QUEUES)


@shared_task
def probe_queue_latency(queue: str, sent_at: float) -> float:
    """Measure how long this message waited in ``queue`` before a worker started it.

    Compares wall clocks of the sender and the worker: keep hosts NTP-synced.
    """
    waited = max(time.time() - sent_at, 0.0)
    try:
        metrics.record_latency(queue, waited)
    except redis.RedisError as exc:
        # One sample lost; the next probe comes within a minute. Not worth a retry
        # (a late sample is a wrong one) nor a dead letter: Redis down has alarms of its own.
        logger.warning("queue %s: latency sample lost, Redis did not answer: %s", queue, exc)
    sla = topology.SLA_SECONDS[queue]
    if waited > sla:
        logger.error("queue %s breached its SLA: waited %.3fs (SLA %.1fs)", queue, waited, sla)
    return waited
    # --8<-- [end:canary]


def delete_in_batches(rows: QuerySet, batch_size: int) -> int:
    """Delete ``rows`` ``batch_size`` at a time, each batch a short statement of its own; how many.

    A first nightly run over years of rows then holds no long lock on the table.
    """
    deleted = 0
    while batch := list(rows.values_list("pk", flat=True)[:batch_size]):
        deleted += rows.model.objects.filter(pk__in=batch).delete()[0]
    return deleted


# --8<-- [start:clear-expired-sessions]
@shared_task
def clear_expired_sessions(dry_run: bool = False) -> int:
    """Delete expired sessions, what ``manage.py clearsessions`` does. Beat, daily, on "low".

    Django never deletes a database session by itself: every visitor leaves a row,
    and a table nobody prunes grows for ever (and slows every login). The count is
    read from the database table; the deletion is the session engine's own
    ``clear_expired()``, so a different SESSION_ENGINE keeps working (file sessions
    are pruned too, cache sessions expire in the cache and need none of this).
    """
    expired = Session.objects.filter(expire_date__lt=timezone.now()).count()
    if not dry_run:
        import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
        logger.info("sessions: deleted %s expired", expired)
    return expired
    # --8<-- [end:clear-expired-sessions]
