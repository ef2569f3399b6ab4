"""A database that takes no writes for a while, on the real pools: a primary demoted to a standby.

During a failover the old primary comes back as a standby, and a connection that
still reaches it (a stale DNS entry, a pooler not yet told) is refused every write
with "cannot execute UPDATE in a read-only transaction" (SQLSTATE 25006). That
passes like an outage: a task that meets it is retried, on a new connection.
"""

import signal
from datetime import datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment

from .conftest import wait_for

pytestmark = pytest.mark.integration
TIMEOUT = 60


def set_read_only(on: bool) -> None:
    """Make every new session of the test database read-only, or writable again."""
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} {setting}")


def clock() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def end_sessions_opened_since(moment: datetime) -> None:
    """End the sessions of the test database opened since ``moment`` (read-only ones), but this test's.

    Only those: the other sessions of this process (the live server's, other
    asyncio contexts') and of the other pools were opened before, and stay usable.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_start >= %s",
            [moment],
        )


@pytest.fixture
def demoted(live_celery):
    """The demotion: worker-high, with a single process, starts while every new session of
    the test database takes no writes; its process's connection is one of them."""
    live_celery.kill("worker-high", signal.SIGTERM, timeout=90)
    since = clock()
    set_read_only(True)
    try:
        live_celery.restart("worker-high", WORKER_HIGH_CONCURRENCY="1")
        yield live_celery
    finally:
        set_read_only(False)
        try:
            live_celery.kill("worker-high", signal.SIGTERM, timeout=90)
        finally:
            end_sessions_opened_since(since)  # none left that opened while it was read-only
            live_celery.restart("worker-high")  # the next tests need the pool as it was


def test_a_payment_during_a_demotion_is_retried_and_paid_once_the_database_takes_writes(demoted):
    user = get_user_model().objects.create_user("standby", "standby@example.com", "pw")  # this session writes
    order = Order.objects.create(user=user, amount_cents=4200)
    result = process_payment.delay(order.pk)
    wait_for(lambda: result.state == "RETRY", TIMEOUT, "the retry after the refused write", interval=0.02)
    # Writable again, but only for new sessions, as after a promotion: the pool's
    # process must drop the read-only one it holds (its health check finds it usable).
    set_read_only(False)

    assert result.get(timeout=TIMEOUT) == "paid"
    assert result.retries >= 1
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert SandboxCharge.objects.count() == 1
    assert not FailedTask.objects.exists()
    assert "database unavailable, retrying" in demoted.log("worker-high")
