"""csv_export.copy_out, the export's hot loop straight from libpq: every way a COPY can end.

Each test ends with the connection asked a question: a COPY left half-read
would make every later query on it fail ("another command is already in
progress"), and a pool child keeps its connection for the next task.
"""

import io
from contextlib import contextmanager

import psycopg
import pytest
from django.db import OperationalError, connection, connections, transaction

from ..csv_export import copy_out

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="COPY needs Postgres")


@contextmanager
def streaming(select: str):
    """``COPY (select) TO STDOUT``, started on Django's connection, as the export's batches are."""
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY ({select}) TO STDOUT (FORMAT csv)") as copy:
        yield copy


def answers(alias: str = "default") -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


def test_every_row_in_order_with_the_count_and_the_last_row(db):
    out = io.BytesIO()
    # 200,000 rows, ~1.3 MB: many socket reads, so the loop waits for the server as well.
    with streaming("SELECT n, 'row ' || n FROM generate_series(1, 200000) AS n") as copy:
        rows, last = copy_out(copy, out.write)

    assert (rows, bytes(last)) == (200_000, b"200000,row 200000\n")
    lines = out.getvalue().splitlines()
    assert lines[:2] == [b"1,row 1", b"2,row 2"]
    assert len(lines) == 200_000
    assert answers()


def test_no_rows(db):
    with streaming("SELECT 1 WHERE false") as copy:
        assert copy_out(copy, io.BytesIO().write) == (0, None)
    assert answers()


def test_an_error_in_the_statement_is_raised_after_the_rows_before_it(db):
    out = io.BytesIO()
    select = "SELECT 1 / (3 - n) FROM generate_series(1, 5) AS n"
    with pytest.raises(psycopg.errors.DivisionByZero), transaction.atomic(), streaming(select) as copy:
        copy_out(copy, out.write)

    assert out.getvalue() == b"0\n1\n"  # 1/2 and 1/1 (integer division), then 1/0
    assert answers()


def test_a_write_that_fails_ends_the_copy_and_the_connection_goes_on(db):
    written = []

    def write(row):
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(bytes(row))

    select = "SELECT n FROM generate_series(1, 100000) AS n"
    with pytest.raises(OSError, match="No space left"), transaction.atomic(), streaming(select) as copy:
        copy_out(copy, write)

    assert written == [b"1\n", b"2\n", b"3\n"]
    assert answers()


def test_a_connection_cut_mid_copy_is_djangos_operational_error(transactional_db):
    """pg_terminate_backend (a failover, an idle reaper): BaseTask retries it from the checkpoint."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    db = connection.settings_dict
    seen = []

    def write(row):
        seen.append(row)
        if len(seen) == 2:  # the server is streaming: end its session from another one
            with psycopg.connect(
                dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"], port=db["PORT"]
            ) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [pid])

    try:
        select = "SELECT n, pg_sleep(0.001) FROM generate_series(1, 5000) AS n"
        with pytest.raises(OperationalError), connection.wrap_database_errors, streaming(select) as copy:
            copy_out(copy, write)
        assert len(seen) < 5000
    finally:
        connection.close()  # broken: the next query gets a new one, as Django's request and task hooks do
    assert answers()
