"""Drill: the broker is down while users check out, reset passwords and ask for exports.

Redis (broker and result backend) is stopped. Checkouts, "forgot my password"
requests and export requests go through the real views: each must answer with
its usual redirect, and each leaves its business row and an outbox row behind,
committed together. Redis comes back; the outbox relay publishes the backlog;
every order is paid with one charge, every reset emailed once, every export
byte-identical to a plain COPY, every outbox row sent, nothing dead-lettered.
"""

import re
from collections import Counter

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.drill

CHECKOUTS = 4
RESETS = 3
EXPORTS = 1


def test_broker_down_at_dispatch_loses_nothing_and_doubles_nothing(project, pools, redis_server):
    redis_server.stop()

    submitted = project.driver("submit", "--checkouts", CHECKOUTS, "--resets", RESETS, "--exports", EXPORTS)

    # Every request succeeded (a redirect, not a 500) with the broker down ...
    assert [answer["status"] for answer in submitted["answers"]] == [302] * (CHECKOUTS + RESETS + EXPORTS)
    orders, jobs = submitted["orders"], submitted["jobs"]
    requests = [reset["request"] for reset in submitted["resets"]]
    assert (len(orders), len(requests), len(jobs)) == (CHECKOUTS, RESETS, EXPORTS)
    # ... and its work waits in the outbox, committed with the rows it is about.
    assert project.driver("state")["outbox"]["unsent"] == CHECKOUTS + RESETS + EXPORTS
    assert project.orders_in("pending", orders) == CHECKOUTS

    redis_server.start()

    wait_for(lambda: project.orders_in("paid", orders) == CHECKOUTS, 120, "every order to be paid")
    wait_for(lambda: project.resets_sent(requests) == RESETS, 120, "every password reset to be sent")
    wait_for(lambda: all(project.export_completed(job) for job in jobs), 180, "every export to complete")
    state = project.driver("state")

    assert state["outbox"]["unsent"] == 0
    for order_id in orders:  # one charge each, the one we recorded, at the first attempt
        order = state["orders"][str(order_id)]
        assert state["charges_per_key"][order["key"]] == 1
        assert state["ledger"][order["key"]] == order["charge_id"]
        assert order["attempts"] == 1
    sent = Counter(map(int, re.findall(r"password reset email sent to user (\d+)", pools.log("worker-high"))))
    assert [sent[reset["user"]] for reset in submitted["resets"]] == [1] * RESETS
    for job in jobs:
        with open(state["exports"][str(job)]["file"], "rb") as handle:
            assert handle.read() == project.reference
    # Each outbox message ran once: one run-log line per task id across the pools.
    runs = pools.log("worker-high") + pools.log("worker-export")
    for task_id in state["outbox"]["task_ids"]:
        assert len(re.findall(rf"id={task_id} ", runs)) == 1, task_id
    assert not state["failed_tasks"]
