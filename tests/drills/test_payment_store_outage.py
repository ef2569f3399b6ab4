"""Drill: the sandbox provider's Redis is down while a payment reaches it, then comes back.

Found by the chaos soak (seed 1402138414): Redis restarted while a payment was
at the sandbox provider, whose plans live in Redis. The ``redis.ConnectionError``
was not an error the task retries, so the task failed for good and left a dead
letter for a blip. Now the sandbox turns its store's outage into
``ProviderTimeout``, the task retries with the same idempotency key, and the
order is paid once, with no dead letter.

The provider's Redis (``REDIS_URL``) is a server of its own here, apart from the
broker, so that the outage hits the provider call and nothing else: with one
server the worker would also lose its broker connection and cancel the task
first (``test_redis_restart.py`` drills that).
"""

import signal

import pytest

from .conftest import RedisServer, assert_each_order_charged_once, wait_for

pytestmark = pytest.mark.drill


def test_a_payment_whose_provider_store_restarts_is_retried_and_charged_once(project, pools, tmp_path):
    store = RedisServer(tmp_path)
    store.start()
    try:
        pools.signal("worker-high", signal.SIGTERM)
        pools.restart("worker-high", {"REDIS_URL": store.url})
        (order,) = project.driver("orders", 1)["orders"]

        store.crash()
        project.driver("pay", order)
        failed = "SELECT count(*) FROM core_failedtask WHERE task_name LIKE %s"

        def attempt_failed():
            return "ProviderTimeout" in pools.current_log("worker-high") or project.scalar(failed, ["%process_payment"])

        wait_for(attempt_failed, 60, "the payment to reach the provider while its Redis is down")
        assert not project.scalar(failed, ["%process_payment"]), "a Redis blip failed the payment for good"
        store.start()  # same port, same data: its AOF replayed

        wait_for(lambda: project.orders_in("paid", [order]), 60, "the retry to pay the order")
        state = project.driver("state")
        assert_each_order_charged_once(state, [order])  # and it ran more than once
        assert not [row for row in state["failed_tasks"] if row["args"] == [order]]
    finally:
        store.stop()
        pools.signal("worker-high", signal.SIGTERM)
        pools.restart("worker-high")
