import logging
import time

from celery import shared_task

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
    metrics.record_latency(queue, waited)
    sla = topology.SLA_SECONDS[queue]
    if waited > sla:
        logger.error("queue %s breached its SLA: waited %.3fs (SLA %.1fs)", queue, waited, sla)
    return waited
    # --8<-- [end:canary]
