"""Drill: Redis, broker and result backend at once, crashes and comes back with its data.

Payments and an export are running, more payments and password resets wait in
the queue, and Redis is SIGKILLed. It restarts from its append-only file.
Afterwards every task has completed exactly as designed: each order paid with
one charge, each reset emailed once, the export byte-identical; none lost, none
doubled.
"""

import re
from collections import Counter

import pytest

from .conftest import assert_each_order_charged_once, part_owners, wait_for

pytestmark = pytest.mark.drill

PAYMENTS = 8
RESETS = 6


def test_redis_crash_mid_flow_loses_nothing_and_doubles_nothing(project, pools, redis_server):
    # The provider takes 3 s: long enough that the crash lands inside a payment
    # (the worker notices the lost connection up to a second later), not after it.
    orders = project.driver("orders", PAYMENTS, "--plan", "slow:3")["orders"]
    job = project.driver("export")["job"]
    wait_for(lambda: project.export_progress(job) >= 0.2, message="20% of the export")
    project.driver("pay", *orders)
    resets = project.driver("resets", RESETS)["resets"]
    # Two payments run on worker-high (slow:3 at the provider), the other
    # payments and the resets wait in the "high" queue, the export runs.
    wait_for(lambda: project.orders_in("processing", orders), message="a payment in flight")

    redis_server.crash()
    redis_server.start()

    requests = [reset["request"] for reset in resets]
    wait_for(lambda: project.orders_in("paid", orders) == PAYMENTS, 120, "every order to be paid")
    wait_for(lambda: project.resets_sent(requests) == RESETS, 120, "every password reset to be sent")
    wait_for(lambda: project.export_completed(job), 120, "the export to complete")
    state = project.driver("state")

    assert_each_order_charged_once(state, orders)
    # Each reset: one email (the task logs a line per email it sent).
    sent = Counter(map(int, re.findall(r"password reset email sent to user (\d+)", pools.log("worker-high"))))
    assert {reset["user"]: sent[reset["user"]] for reset in resets} == {reset["user"]: 1 for reset in resets}
    # The export: byte-identical to a single plain COPY of the same rows.
    export = state["exports"][str(job)]
    with open(export["file"], "rb") as handle:
        assert handle.read() == project.reference
    assert len(part_owners(export["parts"])) >= 2  # interrupted, and resumed from its checkpoint
    assert not state["failed_tasks"]
