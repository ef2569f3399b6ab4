"""Drill: every database connection is cut while an export and payments are running.

What a failover, a restarted PgBouncer or an idle-connection reaper does in
production. The tasks that were using a connection fail mid-query; they must be
retried on a fresh one and finish with nothing corrupted: each order paid with
one charge, the export byte-identical, no order or export left half-written.
"""

import pytest

from .conftest import TRANSACTIONS, assert_each_order_charged_once, part_owners, wait_for

pytestmark = pytest.mark.drill

PAYMENTS = 6

TERMINATE = """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


def test_database_connections_cut_mid_task_are_retried_without_corruption(project, pools):
    # The provider answers slowly (2 s), so a payment is still inside its call when
    # the cut comes, and its next query meets a dead connection.
    orders = project.driver("orders", PAYMENTS, "--plan", "slow:2")["orders"]
    job = project.driver("export")["job"]
    wait_for(lambda: project.export_progress(job) >= 0.2, message="20% of the export")
    project.driver("pay", *orders)
    wait_for(lambda: project.orders_in("processing", orders), message="a payment in flight")

    # Cut every connection of every process (the pools, beat), twice, a couple of payments apart.
    assert project.scalar(TERMINATE) > 0
    wait_for(lambda: project.orders_in("paid", orders) >= 2, message="payments after the first cut")
    assert project.scalar(TERMINATE) > 0

    wait_for(lambda: project.orders_in("paid", orders) == PAYMENTS, 90, "every order to be paid")
    wait_for(lambda: project.export_completed(job), 90, "the export to complete")
    state = project.driver("state")
    assert_each_order_charged_once(state, orders)
    export = state["exports"][str(job)]
    assert export["processed_rows"] == TRANSACTIONS
    assert export["lease_owner"] == ""
    with open(export["file"], "rb") as handle:
        assert handle.read() == project.reference
    # The cut hit the export too: a second runner resumed it from its checkpoint.
    assert len(part_owners(export["parts"])) >= 2
    # Retried, not dead-lettered: nothing left for an operator.
    assert state["failed_tasks"] == []
    # Every process is still up (beat and the pools reconnect on their own).
    assert all(pools.running(name) for name in pools.processes)
