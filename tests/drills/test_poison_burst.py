"""Drill: a burst of poison messages lands on the task queues between real payments.

A producer on another release, or a misconfigured client, floods "high" and
"default" with messages no worker can run: a task name nobody registered, JSON
that is not, pickle. Each must leave exactly one ``PoisonMessage`` record; the
payments between them must all be processed, each charged once; and nothing may
be left behind on the broker, neither waiting nor unacknowledged.
"""

from collections import Counter

import pytest
import redis

from .conftest import _admin, wait_for

pytestmark = pytest.mark.drill

PAYMENTS = 8
POISON_PER_PAYMENT = 4
POISON_DURING_OUTAGE = 6


def left_on_broker(url: str, ids: list[str]) -> list[str]:
    """The ids (in a message's headers) of messages still in a queue or in Redis's unacknowledged hash."""
    client = redis.Redis.from_url(url)
    raw = list(client.hvals("unacked"))
    for key in client.scan_iter():
        if client.type(key) == b"list":  # a queue (kombu keeps each one in a Redis list)
            raw += client.lrange(key, 0, -1)
    return [id_ for id_ in ids if any(id_.encode() in message for message in raw)]


def test_poison_burst_between_payments_records_each_once_and_pays_every_order(project, pools, redis_server):
    before = {row["id"] for row in project.driver("state")["poison_messages"]}
    # The provider takes a moment, so payments are still running while poison arrives.
    orders = project.driver("orders", PAYMENTS, "--plan", "slow:0.3")["orders"]
    burst = project.driver("poison-burst", *orders, "--per-order", POISON_PER_PAYMENT)
    sent = {message["id"]: message for message in burst["poison"]}
    assert len(sent) == PAYMENTS * POISON_PER_PAYMENT

    wait_for(lambda: project.orders_in("paid", orders) == PAYMENTS, 90, "every order to be paid")

    def recorded():
        rows = [row for row in project.driver("state")["poison_messages"] if row["id"] not in before]
        return rows if len(rows) >= len(sent) else None

    rows = wait_for(recorded, 60, "every poison message to be recorded", interval=1)
    # Each poison message once, with the reason it was sent for, on the queue it was sent to.
    assert Counter(row["id"] for row in rows) == Counter(list(sent))
    for row in rows:
        assert (row["reason"], row["queue"]) == (sent[row["id"]]["reason"], sent[row["id"]]["queue"])
        assert row["deliveries"] == 1
    # Every order paid once: one run, one charge, the one recorded.
    state = project.driver("state")
    for order_id in orders:
        order = state["orders"][str(order_id)]
        assert (order["status"], order["attempts"]) == ("paid", 1)
        assert state["charges_per_key"][order["key"]] == 1
        assert state["ledger"][order["key"]] == order["charge_id"]
    assert not state["failed_tasks"]

    # Nothing of the burst left on the broker: none of its messages waiting in a
    # queue, none delivered and never acknowledged. (Earlier drills may leave
    # their own messages, e.g. a countdown held by a worker: not ours to judge.)
    ours = [*sent, *burst["tasks"]]
    wait_for(lambda: not left_on_broker(redis_server.url, ours), 30, "the burst to leave the broker", interval=1)
    assert all(pools.running(name) for name in pools.processes)


def test_poison_arriving_while_the_database_is_down_is_recorded_once_it_is_back(project, pools, redis_server):
    """The record cannot be written: the message stays on the broker, and is recorded later.

    Postgres refuses every connection to the project's database for a moment (what
    a failover looks like from the workers); poison messages arrive meanwhile.
    """
    before = {row["id"] for row in project.driver("state")["poison_messages"]}
    offsets = {name: len(pools.log(name)) for name in ("worker-high", "worker-default")}

    def unavailable_lines() -> int:
        return sum(pools.log(name)[offset:].count("the database is unavailable") for name, offset in offsets.items())

    _admin(f'ALTER DATABASE "{project.database}" WITH ALLOW_CONNECTIONS false')
    try:
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{project.database}'")
        sent = {message["id"]: message for message in project.driver("poison", POISON_DURING_OUTAGE)["poison"]}
        # Each one: a CRITICAL line, and the message kept for later instead of dropped.
        wait_for(lambda: unavailable_lines() >= len(sent), 30, "the workers to report the outage", interval=0.5)
    finally:
        _admin(f'ALTER DATABASE "{project.database}" WITH ALLOW_CONNECTIONS true')

    def recorded():
        rows = [row for row in project.driver("state")["poison_messages"] if row["id"] not in before]
        return rows if len(rows) >= len(sent) else None

    # Back on its queue after POISON_MESSAGE_REQUEUE_DELAY (10 s), and recorded this time.
    rows = wait_for(recorded, 60, "the poison messages to be recorded after the outage", interval=1)
    assert Counter(row["id"] for row in rows) == Counter(list(sent))
    wait_for(lambda: not left_on_broker(redis_server.url, list(sent)), 30, "them to leave the broker", interval=1)
    # The pools go on working: a payment after the outage is processed.
    (order,) = project.driver("orders", 1)["orders"]
    project.driver("pay", order)
    wait_for(lambda: project.orders_in("paid", [order]), 60, "the payment after the outage")
