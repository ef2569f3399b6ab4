"""Pool children keep their database connection across tasks, and replace a dead one.

Celery's Django fixup would close it after every task (settings: CELERY_DB_REUSE_MAX;
config/celery_app.py: close_old_database_connections). Counted by PostgreSQL itself:
``pg_stat_database.sessions`` is the number of sessions ever opened to a database.
"""

import time

import pytest
from django.db import connection

from {{ cookiecutter.project_slug }}.payments.tasks import process_payment

pytestmark = pytest.mark.integration
TASKS = 60
TIMEOUT = 60


def high_pool_processes(pools) -> int:
    """worker-high's concurrency in this test run (tests/conftest.py sets it)."""
    return int(pools.env["WORKER_HIGH_CONCURRENCY"])


def sessions_opened() -> int:
    """Sessions ever opened to the test database (PostgreSQL 14+), as of now."""
    time.sleep(1.5)  # backends report their statistics at most once a second
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def worker_backends() -> list[int]:
    """Every other backend connected to the test database: the pool children's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return [pid for (pid,) in cursor.fetchall()]


def run_sequentially(count: int, first_id: int) -> None:
    # A missing order: the task reads the database and finishes ("missing"), no retry.
    for order_id in range(first_id, first_id + count):
        result = process_payment.delay(order_id)
        assert result.get(timeout=TIMEOUT) == "missing"
        assert result.retries == 0


def test_tasks_reuse_their_pools_connections(live_celery):
    concurrency = high_pool_processes(live_celery)
    run_sequentially(concurrency * 2, first_id=10**9)  # every child has connected once
    before, held = sessions_opened(), set(worker_backends())

    run_sequentially(TASKS, first_id=2 * 10**9)

    opened = sessions_opened() - before
    # Closing after every task would open one session per task (60).
    assert opened <= concurrency, f"{TASKS} tasks opened {opened} database sessions"
    # And each child went on with its own: every connection held before is still open.
    # (Not "no other backend": another pool's child may connect meanwhile, for its own task.)
    assert held
    assert held <= set(worker_backends())


def test_a_connection_the_database_dropped_is_replaced_before_the_next_task(live_celery):
    concurrency = high_pool_processes(live_celery)
    run_sequentially(concurrency * 2, first_id=3 * 10**9)
    dropped = worker_backends()
    assert dropped, "no pool child kept a connection"

    # What a database restart, a failover or an idle-connection reaper does to them.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM unnest(%s::int[]) AS pid", [dropped])
    # Every child's next task still succeeds at once: no error, no retry (checked in
    # run_sequentially), because the health check replaced the dead connection first.
    run_sequentially(concurrency * 4, first_id=4 * 10**9)
    assert not set(dropped) & set(worker_backends())
