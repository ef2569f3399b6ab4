"""worker-default and its two queues: a backlog in ``low`` never holds up everyday work.

worker-default consumes ``default`` and ``low``. Which one it takes from next is
the broker transport's choice, not Celery's.
{%- if cookiecutter.broker == "rabbitmq" %}
RabbitMQ delivers from each queue as the worker has room, with no order between
queues: ``default`` and ``low`` share the worker's slots, about every other one
each while both have messages. So a flood of ``low`` does not make ``default``
wait for all of it, but ``default`` does not overtake it either (docs/topology.md).
{%- else %}
kombu's Redis transport rotates between them by default ("round_robin"), so a
flooded ``low`` would get every other slot while ``default`` has work waiting.
The project sets ``queue_order_strategy`` to "priority" (config/settings/base.py):
the worker asks Redis for the queues in the order its pool lists them, and Redis
answers from the first that holds a message.
{%- endif %}

The probe task of the latency canary stands in for real work: it returns how long
its message waited, so every message's start time is known.
"""

import signal
import time

import pytest
from celery.result import ResultSet

from {{ cookiecutter.project_slug }}.core.tasks import probe_queue_latency

pytestmark = pytest.mark.integration

LOW_FLOOD = 300  # housekeeping piled up in "low"
DEFAULT_BURST = 20  # then everyday work arrives in "default"


def send_probes(queue: str, count: int) -> list[tuple[float, object]]:
    """``count`` probes to ``queue``: (sent at, result) each."""
    probes = []
    for _ in range(count):
        sent_at = time.time()
        probes.append((sent_at, probe_queue_latency.apply_async((queue, sent_at), queue=queue, expires=300)))
    return probes


def start_times(probes) -> list[float]:
    """When a worker started each probe: sent at + how long it waited."""
    waits = ResultSet([result for _, result in probes]).join(timeout=120)
    return sorted(sent_at + waited for (sent_at, _), waited in zip(probes, waits, strict=True))


{% if cookiecutter.broker == "rabbitmq" -%}
def test_worker_default_shares_its_slots_between_default_and_a_low_backlog(live_celery):
{%- else -%}
def test_worker_default_takes_every_waiting_default_message_before_the_low_backlog(live_celery):
{%- endif %}
    # Both queues fill while worker-default is down (an idle worker stops at once),
    # the "default" messages last: they are the newest work, behind LOW_FLOOD older messages.
    live_celery.kill("worker-default", signal.SIGTERM)
    try:
        low = send_probes("low", LOW_FLOOD)
        default = send_probes("default", DEFAULT_BURST)
    finally:
        live_celery.restart("worker-default")

    low_started, default_started = start_times(low), start_times(default)
    last_default = default_started[-1]
    overtaken_by = sum(started < last_default for started in low_started)
    print(
        f"\n{LOW_FLOOD} low, then {DEFAULT_BURST} default: "
        f"low messages started before the last default one: {overtaken_by}; "
        f"the last default started {last_default - min(low_started + default_started):.2f}s "
        f"after the worker's first task; the low backlog took "
        f"{low_started[-1] - low_started[0]:.2f}s"
    )
{%- if cookiecutter.broker == "rabbitmq" %}
    # About one low message per default one, never the whole flood (that would be
    # one queue for both, first in, first out).
    assert overtaken_by <= 2 * DEFAULT_BURST
{%- else %}
    # Round robin alternates: about DEFAULT_BURST low messages in between.
    assert overtaken_by == 0
{%- endif %}
