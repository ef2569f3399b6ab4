"""The batch query's plan where users meet it: a table loaded a moment ago, never analyzed.

An export started right after a bulk load (an import, a migration, a restore)
meets statistics that do not know the rows are there. Unpinned, Postgres then
answers every batch with a bitmap scan over all the user's remaining rows and a
sort: quadratic, ten times slower at 2M rows (benchmarks/export.py, "fresh").
These tests plan the batch exactly as the export runs it and insist on an
ordered index scan, so a later change to the query or its session cannot bring
the slow plan back unnoticed.
"""

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from ..csv_export import KeysetBatch
from ..models import Transaction

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="plans are Postgres's")

TABLE = Transaction._meta.db_table
INDEX = "transaction_user_id_idx"  # Transaction.Meta.indexes: (user_id, id)


def load(user_id: int, rows: int) -> None:
    """A bulk load, as COPY or INSERT ... SELECT would make it: no ANALYZE after it."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (user_id, created_at, amount, currency, description)"  # noqa: S608 (a module constant)
            " SELECT %s, now() - n * interval '1 minute', n %% 1000, 'EUR', 'row ' || n"
            " FROM generate_series(1, %s) AS n",
            [user_id, rows],
        )


def analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TABLE}")


def assert_ordered_index_scan(plan: str) -> None:
    # Index Scan or Index Only Scan on (user_id, id): rows come in id order and the
    # LIMIT stops the scan after one batch. No bitmap (all the rows, unordered),
    # no sort (of all the rows).
    assert f"Index Scan using {INDEX}" in plan or f"Index Only Scan using {INDEX}" in plan, plan
    assert "Bitmap" not in plan, plan
    assert "Sort" not in plan, plan


@pytest.fixture
def users(db):
    make = get_user_model().objects.create_user
    return make("ada"), make("grace")


def test_a_table_never_analyzed_is_read_through_the_index_in_order(users):
    ada, _ = users
    load(ada.pk, 50_000)

    for after in (0, 25_000):  # the first batch, and one half-way
        assert_ordered_index_scan(KeysetBatch(ada.pk, after, 10_000, use_copy=True).plan())


def test_statistics_from_before_the_users_rows_were_loaded_keep_the_index_scan(users):
    ada, grace = users
    load(grace.pk, 50_000)
    analyze()  # the statistics know grace's rows only
    load(ada.pk, 50_000)

    assert_ordered_index_scan(KeysetBatch(ada.pk, 0, 10_000, use_copy=True).plan())


def test_a_date_range_export_is_planned_the_same_way(users):
    ada, _ = users
    load(ada.pk, 50_000)
    window = (datetime(2020, 1, 1, tzinfo=UTC), None)

    assert_ordered_index_scan(KeysetBatch(ada.pk, 0, 10_000, use_copy=True, window=window).plan())


def test_the_pin_ends_with_the_batch(transactional_db):
    """SET LOCAL: the next query on the pool child's connection is planned as usual.

    (transactional_db: as in a worker, the batch's transaction is a real one, not
    a savepoint inside the test's.)
    """
    ada = get_user_model().objects.create_user("ada")
    KeysetBatch(ada.pk, 0, 10, use_copy=True).plan()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_bitmapscan'), current_setting('enable_sort')")
        assert cursor.fetchone() == ("on", "on")
