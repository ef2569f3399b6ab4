"""The CSV export engine: keyset batches, one file appended to, checkpoints, a lease.

How an export survives being killed:

* Rows are read in keyset batches (``id > last_key ORDER BY id LIMIT n``), never
  with OFFSET (which rescans everything before it) and never as one queryset.
* On a local disk (FileSystemStorage) each runner appends every batch to a file
  of its own, then commits a checkpoint: rows and bytes done, and the last key.
  Bytes past the last checkpoint (a runner that died mid-batch) are never used:
  the next runner starts its own file with the checkpointed prefix of the last
  one (the "truncation" to the checkpoint), and continues from there. When no
  rows are left, that file is the export: every byte is written once.
* Storages that cannot append (S3) get one part file per batch instead, named in
  the checkpoint; a part no checkpoint names (the "partial tail") is ignored and
  that batch rewritten. When no rows are left, the parts are concatenated
  (streamed, chunk by chunk) into the final file, and deleted.
* Every checkpoint is conditional on the runner still holding the job's lease,
  and renews it. A runner that lost its lease stops at its next checkpoint; it
  only ever writes files with its own id in their names, so two runners never
  write the same file; an expired lease marks a dead runner for the watchdog.
* Every checkpoint is also conditional on the job still being queued or running:
  a job cancelled (or failed) under a runner stops it at its next checkpoint.

The result is byte-identical however many times the export was interrupted.
On Postgres each batch is one ``COPY (SELECT ...) TO STDOUT``: the database
formats the CSV, Python only moves bytes. Elsewhere (SQLite) the ORM path
formats exactly the same bytes.

The batch's plan is pinned (``PIN_PLAN``): an ordered scan of the (user, id)
index whatever the table's statistics say, so an export started right after a
bulk load, before anything analyzed the table, runs as fast as one on a
vacuumed table instead of ten times slower.
"""

import io
import logging
import os
import re
import select
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from psycopg import Copy, pq
from psycopg.abc import Buffer
from psycopg.errors import error_from_result

from .models import ExportJob, Transaction

logger = logging.getLogger(__name__)

# created_at is in UTC.
HEADER = ("id", "created_at", "amount", "currency", "description")
BLOCK_SIZE = 1 << 20


class LeaseLost(Exception):
    """Another runner holds the job now; this one must stop writing."""


class Cancelled(Exception):
    """The job was cancelled (or otherwise ended) under the runner: it stops at this checkpoint."""


class StopRequested(Exception):
    """The runner's ``should_stop()`` said so: it stopped at a batch boundary.

    A cooperative stop for code that drives a runner itself (tests use it to
    interrupt a runner at a checkpoint). Not the shutdown path (the pool
    terminates the task, whose handler in tasks.py releases the lease), nor a
    user's cancel (the checkpoint raises ``Cancelled``).
    """


# ------------------------------------------------------------------------------
# Formatting: the ORM path must produce the same bytes as Postgres' COPY ... CSV.
# ------------------------------------------------------------------------------
# --8<-- [start:neutralise]
# A cell starting with one of these is a formula to Excel and LibreOffice
# ("CSV injection"). Text cells that start with one get a leading apostrophe.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A spreadsheet may also start a cell *inside* one of ours. This file separates
# cells with commas and quotes a cell that holds one, but Excel splits on ";"
# wherever ";" is the list separator (LibreOffice and Google Sheets too, when told
# or guessing so, and on tabs): such a reader ignores quotes that do not open its
# cell, and a line break inside ours ends its row. "x;=cmd|' /C calc'!A0" is then
# two cells, the second a formula. Quoting cannot help (to that reader the quote
# is mid-cell), nor can an apostrophe in front of our cell. So a formula character
# after a ";", tab, CR or LF (past any spaces or quotes) gets its own apostrophe:
# "x;'=cmd|' /C calc'!A0". COPY_SELECT does the same in SQL.
CELL_BREAKS = (";", "\t", "\r", "\n")
INNER_FORMULA = re.compile(r'([;\t\r\n][ "]*)([-=+@])')


def neutralise(text: str) -> str:
    """The text with an apostrophe before every formula a spreadsheet could find in it."""
    if any(mark in text for mark in CELL_BREAKS):
        text = INNER_FORMULA.sub(r"\1'\2", text)  # never changes the first character
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text
    # --8<-- [end:neutralise]


def utc_timestamp(moment) -> str:
    """A timestamp as Postgres prints ``timestamptz AT TIME ZONE 'UTC'``."""
    moment = moment.astimezone(UTC)
    fraction = f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""
    return moment.strftime("%Y-%m-%d %H:%M:%S") + fraction


def csv_field(value: str) -> str:
    """Quote like COPY ... (FORMAT csv): only when needed, and always for ''."""
    if value == "" or any(char in value for char in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_line(fields) -> str:
    return ",".join(csv_field(field) for field in fields) + "\n"


HEADER_LINE = csv_line(HEADER).encode()

# The same columns, formatted by Postgres. Numbers and timestamps cannot start
# with a formula character that matters (a leading "-" on an amount is a
# negative number), so only the text columns are neutralised. Comparing ascii()
# of the first character is several times cheaper than comparing substrings.
FORMULA_CODES = ", ".join(str(ord(prefix)) for prefix in FORMULA_PREFIXES)
# CELL_BREAKS and INNER_FORMULA as SQL literals (E'' strings turn \t, \r, \n into the characters).
CELL_BREAKS_SQL = ("';'", r"E'\t'", r"E'\r'", r"E'\n'")
INNER_FORMULA_SQL = r"""E'([;\t\r\n][ "]*)([-=+@])'"""
INNER_REPLACEMENT_SQL = r"E'\\1''\\2'"  # \1'\2: the break (and gap), an apostrophe, the formula character


def neutralised_sql(column: str) -> str:
    """``neutralise()`` in SQL, for the COPY path: the same bytes.

    Nearly every cell holds no ";", tab or line break, and four strpos() say so
    cheaply; the regular expression, several times dearer, only runs on a cell
    that has one.
    """
    has_break = " OR ".join(f"strpos({column}, {mark}) > 0" for mark in CELL_BREAKS_SQL)
    starts_formula = f"ascii({column}) IN ({FORMULA_CODES})"
    inner = f"regexp_replace({column}, {INNER_FORMULA_SQL}, {INNER_REPLACEMENT_SQL}, 'g')"
    return (
        f"CASE WHEN {has_break} THEN CASE WHEN {starts_formula} THEN '''' ELSE '' END || {inner}"
        f" WHEN {starts_formula} THEN '''' || {column} ELSE {column} END"
    )


COPY_SELECT = (
    "SELECT id,"  # noqa: S608 (only module constants are interpolated)
    " created_at AT TIME ZONE 'UTC',"  # "2026-01-31 23:59:59[.123]": cheap, unlike to_char()
    " amount,"
    f" {neutralised_sql('currency')},"
    f" {neutralised_sql('description')}"
    " FROM {table} WHERE user_id = %s AND id > %s AND id <= %s ORDER BY id"
)
# An export of a date range also filters on created_at (two more parameters).
IN_WINDOW = " AND created_at >= %s AND created_at < %s"
# A batch: the next rows after the last key, up to the batch size.
COPY_BATCH = COPY_SELECT.replace(" AND id <= %s", "") + " LIMIT %s"
COPY_BATCH_IN_WINDOW = COPY_BATCH.replace(" ORDER BY id", IN_WINDOW + " ORDER BY id")

# --8<-- [start:pin-plan]
# The plan every batch must get: walk the (user_id, id) index in order and stop
# after LIMIT rows. The planner picks it when its statistics know how many rows
# the user has. Right after a bulk load they do not (nothing has analyzed the
# table yet, or the last ANALYZE predates the user's rows): it then expects a few
# hundred rows and reads ALL the user's rows past the key through a bitmap, then
# sorts them, for every batch. That is quadratic: 14-24 s instead of about 2 s for 2M
# rows. Switching bitmap scans and explicit sorts off for the batch's transaction
# (SET LOCAL: nothing leaks to the next query on this connection) leaves the
# planner only plans that stream in id order and stop at the LIMIT. The test
# exports/tests/test_batch_plan.py checks the plan on a freshly loaded table.
PIN_PLAN = "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true)"
# --8<-- [end:pin-plan]

# [start, end) of the rows' created_at; None is an open end (ExportJob.window()).
Window = tuple[datetime | None, datetime | None]


def window_sql(window: Window) -> tuple[str, list]:
    """The SQL filter of a date range, and its parameters. No range, no filter:
    a plain export's batch bounds stay an index-only scan."""
    start, end = window
    if start is None and end is None:
        return "", []
    # Postgres timestamps accept "-infinity" and "infinity" for an open end.
    return IN_WINDOW, [start or "-infinity", end or "infinity"]


def window_q(window: Window) -> Q:
    start, end = window
    q = Q()
    if start is not None:
        q &= Q(created_at__gte=start)
    if end is not None:
        q &= Q(created_at__lt=end)
    return q


def orm_lines(rows) -> Iterator[tuple[str, int]]:
    """Each row as the CSV line COPY would write, with its key."""
    for pk, created_at, amount, currency, description in rows:
        fields = (str(pk), utc_timestamp(created_at), f"{amount:.2f}", neutralise(currency), neutralise(description))
        yield csv_line(fields), pk


# ------------------------------------------------------------------------------
# Streaming into storage without holding a batch in memory.
# ------------------------------------------------------------------------------
class ChunkFile(File):
    """A Django File whose content is produced by an iterator of byte chunks.

    ``storage.save()`` reads it with ``chunks()`` (FileSystemStorage) or ``read()``
    (S3 uploads), so the bytes flow from the database to storage piece by piece.
    """

    def __init__(self, chunks: Iterator[bytes], name: str):
        super().__init__(io.BufferedReader(_IteratorIO(chunks)), name=name)
        self.bytes = 0
        self._chunks = chunks

    def chunks(self, chunk_size=None):
        try:
            for chunk in self._chunks:
                self.bytes += len(chunk)
                yield chunk
        finally:
            # If the storage gives up half-way, end the COPY now: an unfinished
            # COPY would block every later query on this database connection.
            close = getattr(self._chunks, "close", None)
            if close:
                close()

    @property
    def size(self):  # unknown until streamed; storages that need it read to the end
        return None


class _IteratorIO(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._pending = chunks, b""

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            try:
                self._pending = bytes(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size


def stream_parts(names: list[str], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    for name in names:
        with default_storage.open(name, "rb") as part:
            while chunk := part.read(chunk_size):
                yield chunk


# --8<-- [start:copy-out]
def copy_out(copy: Copy, write) -> tuple[int, Buffer | None]:
    """Hand every row of a ``COPY ... TO STDOUT`` to ``write``; return the row count and the last row.

    The export's hot loop. ``for row in copy`` costs about a microsecond of Python
    per row in psycopg (three generators deep, for each row): at 2M rows the worker
    then uses as much CPU as the Postgres backend that formats the rows, and on a
    busy machine it is the one that waits. libpq has usually received many rows
    already: ``get_copy_data(1)`` hands out the next one without waiting (half the
    cost), and only when none is left does the loop wait for the socket. At the
    end of the COPY (-1), the statement's own result says how it ended.
    """
    pgconn = copy.connection.pgconn
    get, rows, row = pgconn.get_copy_data, 0, None
    socket = select.poll()
    socket.register(pgconn.socket, select.POLLIN)
    while True:
        size, data = get(1)  # raises OperationalError if the connection broke
        if size > 0:
            write(data)
            rows, row = rows + 1, data
        elif size == 0:  # nothing received yet: wait for the server
            socket.poll()
            pgconn.consume_input()
        else:
            break
    while pgconn.is_busy():  # the end of the COPY: its result, then ready for the next query
        socket.poll()
        pgconn.consume_input()
    result = pgconn.get_result()
    while pgconn.get_result() is not None:
        pass
    if result.status != pq.ExecStatus.COMMAND_OK:
        raise error_from_result(result)
    return rows, row
    # --8<-- [end:copy-out]


# ------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------
class Header:
    """The first thing written: the header line, no rows."""

    rows, last_key = 0, 0

    def __iter__(self) -> Iterator[bytes]:
        yield HEADER_LINE

    def write_to(self, write) -> None:
        write(HEADER_LINE)


# --8<-- [start:keyset-batches]
class KeysetBatch:
    """The next batch: up to ``size`` rows with id > ``after`` (and in the window), as CSV bytes.

    One statement per batch, ``... WHERE user_id = ? AND id > ? ORDER BY id LIMIT n``
    over the (user_id, id) index: no OFFSET, no separate query for the batch's
    bounds. ``rows`` and ``last_key`` are known once the batch has been read
    (Postgres sends one COPY message per row; the id is its first column).
    """

    def __init__(self, user_id: int, after: int, size: int, use_copy: bool, window: Window = (None, None)):
        self.user_id, self.after, self.size, self.use_copy, self.window = user_id, after, size, use_copy, window
        self.rows, self.last_key = 0, after

    def select(self) -> tuple[str, list]:
        """The batch's SELECT and its parameters."""
        clause, params = window_sql(self.window)
        select = (COPY_BATCH_IN_WINDOW if clause else COPY_BATCH).format(table=Transaction._meta.db_table)
        return select, [self.user_id, self.after, *params, self.size]

    @contextmanager
    def _session(self) -> Iterator:
        """A cursor in a transaction of the batch's own, with the plan pinned (``PIN_PLAN``).

        Django's error wrapper, as around every query Django runs itself: a broken
        connection mid-COPY (a failover, pg_terminate_backend) is Django's
        OperationalError, which BaseTask retries from the checkpoint.
        """
        with connection.wrap_database_errors, transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(PIN_PLAN)
            yield cursor

    @contextmanager
    def _copy(self) -> Iterator:
        """The batch's ``COPY (SELECT ...) TO STDOUT``, started: the caller reads it.

        Leaving the block early (``write`` failed) ends the COPY there: an
        unfinished COPY would block every later query on the connection.
        """
        select, params = self.select()
        statement = "COPY (" + select + ") TO STDOUT (FORMAT csv)"
        with self._session() as cursor, cursor.cursor.copy(statement, params) as copy:
            yield copy

    def plan(self) -> str:
        """``EXPLAIN`` of the batch's query, planned as the batch's COPY is (tests, benchmarks)."""
        select, params = self.select()
        with self._session() as cursor:
            cursor.execute("EXPLAIN " + select, params)
            return "\n".join(line for (line,) in cursor.fetchall())

    def _copy_rows(self) -> Iterator[bytes]:
        """The batch's rows, one CSV line each; ``rows`` and ``last_key`` set once it ends."""
        rows, row = 0, None
        with self._copy() as copy:
            for rows, row in enumerate(copy, 1):  # noqa: B007 (the last row is used after the loop)
                yield row
        self.rows = rows
        self._last_row(row)
        # --8<-- [end:keyset-batches]

    def _last_row(self, row) -> None:
        if row is not None:  # Postgres sends one COPY message per row; the id is its first column
            self.last_key = int(bytes(row).split(b",", 1)[0])

    def write_to(self, write) -> None:
        """Hand every row to ``write`` (a buffered file's)."""
        if not self.use_copy:
            for chunk in self:
                write(chunk)
            return
        with self._copy() as copy:
            self.rows, row = copy_out(copy, write)
        self._last_row(row)

    def __iter__(self) -> Iterator[bytes]:
        """The same bytes in ~1 MiB blocks, for storages that take a file-like object."""
        if self.use_copy:
            # COPY hands out one message per row: gather them into ~1 MiB blocks so
            # storage sees a few large writes instead of a million small ones.
            block = bytearray()
            with closing(self._copy_rows()) as rows:
                for row in rows:
                    block += row
                    if len(block) >= BLOCK_SIZE:
                        yield bytes(block)
                        block.clear()
            if block:
                yield bytes(block)
            return
        rows = (
            Transaction.objects.filter(window_q(self.window), user_id=self.user_id, pk__gt=self.after)
            .order_by("pk")
            .values_list(*HEADER)[: self.size]
            .iterator(chunk_size=2000)
        )
        block = []
        for line, pk in orm_lines(rows):
            block.append(line)
            self.rows, self.last_key = self.rows + 1, pk
            if len(block) == 2000:
                yield "".join(block).encode()
                block.clear()
        if block:
            yield "".join(block).encode()


# ------------------------------------------------------------------------------
# Where the bytes go
# ------------------------------------------------------------------------------
def appends_in_place(storage=default_storage) -> bool:
    """A local disk (FileSystemStorage): the export is one file, appended to.

    Other storages (S3) cannot append: each batch becomes a part, and the parts
    are concatenated at the end.
    """
    return isinstance(storage, FileSystemStorage)


class ExportFileDamaged(Exception):
    """The file a checkpoint vouches for is shorter than the checkpoint says (a lost disk write)."""


def copy_prefix(source: str, out, length: int) -> None:
    """Copy the first ``length`` bytes of ``source`` into ``out``, 1 MiB at a time."""
    with open(source, "rb") as src:
        while length:
            chunk = src.read(min(BLOCK_SIZE, length))
            if not chunk:
                raise ExportFileDamaged(f"{source} ends before its checkpoint ({length} bytes short)")
            out.write(chunk)
            length -= len(chunk)


# ------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------
class ExportRunner:
    """Runs one export job under a lease. ``should_stop()`` is polled between batches."""

    def __init__(self, job_id: int, owner: str | None = None, should_stop=lambda: False, use_copy=None):
        self.job_id = job_id
        self.owner = owner or uuid.uuid4().hex
        self.should_stop = should_stop
        self.batch_size = settings.EXPORT_BATCH_SIZE
        # COPY on Postgres, the ORM elsewhere; both write the same bytes.
        self.use_copy = connection.vendor == "postgresql" if use_copy is None else use_copy
        self.appends = appends_in_place()
        self._out = None  # the file this runner appends to (appending storages only)

    # The owner in every name: a runner that lost its lease can never write
    # into a file the current runner writes.
    def part_name(self, index: int) -> str:
        return f"exports/{self.job_id}/part-{index:06d}-{self.owner}.csv"

    def file_name(self) -> str:
        return f"exports/{self.job_id}/transactions-{self.job_id}-{self.owner}.csv"

    def is_mine_kind(self, name: str) -> bool:
        """Whether a checkpointed file was written the way this runner writes (append, or parts)."""
        return name.rsplit("/", 1)[-1].startswith("transactions-" if self.appends else "part-")

    # --8<-- [start:runner]
    # --8<-- [start:runner-loop]
    def run(self) -> ExportJob:
        job = ExportJob.objects.get(pk=self.job_id)
        window = job.window()
        if job.status == ExportJob.Status.PENDING:
            job.started_at = timezone.now()  # the count for the progress bar is part of the job
            job.total_rows = Transaction.objects.filter(window_q(window), user_id=job.user_id).count()
            self._checkpoint(
                job, status=ExportJob.Status.RUNNING, total_rows=job.total_rows, started_at=job.started_at
            )
        if job.parts and not self.is_mine_kind(job.parts[-1]):
            # Written by the other way (the storage changed under the job): start over.
            self._checkpoint(job, parts=[], processed_rows=0, bytes_written=0, last_key=0)
        try:
            if self.appends:
                self._open(job)
            if not job.parts:
                self._write_part(job, Header())

            while True:
                if self.should_stop():
                    raise StopRequested
                if settings.EXPORT_THROTTLE_SECONDS:
                    time.sleep(settings.EXPORT_THROTTLE_SECONDS)
                batch = KeysetBatch(job.user_id, job.last_key, self.batch_size, self.use_copy, window)
                self._write_part(job, batch)
                if batch.rows < self.batch_size:  # a short batch is the last one
                    break
            return self._finish(job)
        finally:
            if self._out is not None:
                self._out.close()
        # --8<-- [end:runner-loop]

    def _open(self, job: ExportJob) -> None:
        """Start this runner's own file: a new, exclusive name; on resume, the checkpointed prefix of the last one.

        The previous runner's file is copied up to its last checkpoint, never
        truncated in place: its runner may still be alive (a lease expires, it
        does not prove death), and must never write into the file we continue.
        Whatever it wrote past its checkpoint is left behind.
        """
        path = Path(default_storage.path(self.file_name()))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(path, "xb", buffering=BLOCK_SIZE)  # noqa: SIM115 (closed by run())
        if default_storage.file_permissions_mode is not None:
            os.chmod(path, default_storage.file_permissions_mode)
        if job.parts:
            previous = job.parts[-1]
            copy_prefix(default_storage.path(previous), self._out, job.bytes_written)
            # In the file before the checkpoint names it and the previous file goes:
            # a runner killed right after would otherwise take the prefix with it.
            self._out.flush()
            self._checkpoint(job, parts=[*job.parts, self.file_name()])
            default_storage.delete(previous)

    def _write_part(self, job: ExportJob, batch) -> None:
        """Write one batch (or the header), then commit the checkpoint that vouches for it."""
        if self.appends:
            start = self._out.tell()
            batch.write_to(self._out.write)
            self._out.flush()  # in the file before the checkpoint says so
            written, parts, name = self._out.tell() - start, job.parts or [self.file_name()], None
        else:
            content = ChunkFile(iter(batch), name="part.csv")
            name = default_storage.save(self.part_name(len(job.parts)), content)
            written, parts = content.bytes, [*job.parts, name]
        if written == 0 and job.parts:  # an empty last batch: nothing to vouch for
            if name:
                default_storage.delete(name)
            return
        try:
            self._checkpoint(
                job,
                parts=parts,
                processed_rows=job.processed_rows + batch.rows,
                bytes_written=job.bytes_written + written,
                last_key=batch.last_key,
            )
        except (LeaseLost, Cancelled):
            if name:  # a part no checkpoint names; an appended tail is left in the runner's own file
                default_storage.delete(name)
            raise

    # --8<-- [start:runner-checkpoint]
    def _checkpoint(self, job: ExportJob, **changes) -> None:
        """Commit progress and renew the lease, only while we still hold it and the job is still wanted.

        The same conditional UPDATE notices a cancel: no extra query per batch,
        and no window between "is it cancelled?" and the write.
        """
        now = timezone.now()
        changes |= {"heartbeat_at": now, "lease_expires_at": now + ExportJob.lease_duration()}
        mine = ExportJob.objects.filter(pk=job.pk, lease_owner=self.owner)
        if not mine.filter(status__in=ExportJob.ACTIVE).update(**changes):
            if mine.exclude(status__in=ExportJob.ACTIVE).exists():
                raise Cancelled(f"export {job.pk}: ended under its runner")
            raise LeaseLost(f"export {job.pk}: lease lost by {self.owner}")
        for field, value in changes.items():
            setattr(job, field, value)
            # --8<-- [end:runner-checkpoint]
            # --8<-- [end:runner]

    def _finish(self, job: ExportJob) -> ExportJob:
        if self.appends:
            # The file is complete as it is: it becomes the export, no second write.
            self._out.close()
            self._checkpoint(job, file=self.file_name(), status=ExportJob.Status.COMPLETED, finished_at=timezone.now())
        else:
            final = ChunkFile(stream_parts(job.parts), name="final.csv")
            name = default_storage.save(f"exports/transactions-{job.pk}-{self.owner[:8]}.csv", final)
            try:
                self._checkpoint(job, file=name, status=ExportJob.Status.COMPLETED, finished_at=timezone.now())
            except (LeaseLost, Cancelled):
                default_storage.delete(name)
                raise
        ExportJob.release(job.pk, self.owner)
        self.delete_parts(job)
        return job

    @staticmethod
    def delete_parts(job: ExportJob) -> None:
        """Remove every part of the job, including tails of runners that died; never its finished file."""
        directory = f"exports/{job.pk}"
        try:
            _, files = default_storage.listdir(directory)
        except FileNotFoundError:
            files = []
        for name in files:
            if f"{directory}/{name}" != job.file.name:
                default_storage.delete(f"{directory}/{name}")
