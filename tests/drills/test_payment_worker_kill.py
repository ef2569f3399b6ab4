"""Drill: the pool process running a payment is SIGKILLed after the provider charged, before our commit.

The classic double charge: the retry finds the order unpaid and charges again.
Here the retry sends the same idempotency key and gets the same charge back.
"""

import os
import signal

import pytest

from .conftest import assert_each_order_charged_once, wait_for

pytestmark = pytest.mark.drill

BYSTANDERS = 3


def test_payment_process_killed_between_charge_and_commit_charges_once(project, pools):
    # The sandbox provider charges, then hangs for 30 s: the window to kill in.
    (order,) = project.driver("orders", 1, "--plan", "hang_after_charge:30")["orders"]
    others = project.driver("orders", BYSTANDERS, "--plan", "slow:0.5")["orders"]
    (task,) = project.driver("pay", order)["tasks"]
    project.driver("pay", *others)

    charged = """
        SELECT count(*) FROM payments_sandboxcharge AS charge
          JOIN payments_order AS o ON charge.idempotency_key = o.idempotency_key::text WHERE o.id = %s
    """
    wait_for(lambda: project.scalar(charged, [order]), message="the provider to charge")
    assert project.orders_in("processing", [order]) == 1  # charged, not yet recorded
    os.kill(pools.child_running("worker-high", task), signal.SIGKILL)

    # The pool notices its dead process and retries the task (task_retry_on_worker_lost).
    everyone = [order, *others]
    wait_for(lambda: project.orders_in("paid", everyone) == len(everyone), 60, "every order to be paid")
    state = project.driver("state")
    assert state["orders"][str(order)]["attempts"] == 2  # the killed attempt and the retry
    assert_each_order_charged_once(state, everyone)
