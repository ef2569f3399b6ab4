"""The CSV export engine: keyset batches, part files, checkpoints, a lease.

How an export survives being killed:

* Rows are read in keyset batches (``id > last_key ORDER BY id LIMIT n``), never
  with OFFSET (which rescans everything before it) and never as one queryset.
* Each batch is streamed into its own part file in storage, then a checkpoint is
  committed: the part's name, rows and bytes done, and the last key. A runner
  that dies mid-batch leaves at most one part that no checkpoint mentions; the
  next runner ignores it (the "partial tail") and rewrites that batch.
* Every checkpoint is conditional on the runner still holding the job's lease,
  and renews it. A runner that lost its lease stops at its next checkpoint, so two
  runners never both write the job; an expired lease marks a dead runner for the
  watchdog.
* Every checkpoint is also conditional on the job still being queued or running:
  a job cancelled (or failed) under a runner stops it at its next checkpoint.
* When no rows are left, the parts are concatenated (streamed, chunk by chunk)
  into the final file, and the parts are deleted.

The result is byte-identical however many times the export was interrupted.
On Postgres each batch is one ``COPY (SELECT ...) TO STDOUT``: the database
formats the CSV, Python only moves bytes. Elsewhere (SQLite) the ORM path
formats exactly the same bytes.
"""

import io
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from .models import ExportJob, Transaction

logger = logging.getLogger(__name__)

# created_at is in UTC.
HEADER = ("id", "created_at", "amount", "currency", "description")
# A cell starting with one of these is a formula to Excel and LibreOffice
# ("CSV injection"). Text cells that start with one get a leading apostrophe.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
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
def neutralise(text: str) -> str:
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text


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
COPY_SELECT = (
    "SELECT id,"  # noqa: S608 (only module constants are interpolated)
    " created_at AT TIME ZONE 'UTC',"  # "2026-01-31 23:59:59[.123]": cheap, unlike to_char()
    " amount,"
    f" CASE WHEN ascii(currency) IN ({FORMULA_CODES}) THEN '''' || currency ELSE currency END,"
    f" CASE WHEN ascii(description) IN ({FORMULA_CODES}) THEN '''' || description ELSE description END"
    " FROM {table} WHERE user_id = %s AND id > %s AND id <= %s ORDER BY id"
)
# An export of a date range also filters on created_at (two more parameters).
IN_WINDOW = " AND created_at >= %s AND created_at < %s"
COPY_SELECT_IN_WINDOW = COPY_SELECT.replace(" ORDER BY id", IN_WINDOW + " ORDER BY id")


BATCH_BOUNDS = """
    SELECT count(*), coalesce(max(id), %s)
      FROM (SELECT id FROM {table} WHERE user_id = %s AND id > %s{window} ORDER BY id LIMIT %s) AS batch
"""

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


def orm_lines(rows) -> Iterator[str]:
    for pk, created_at, amount, currency, description in rows:
        yield csv_line(
            (
                str(pk),
                utc_timestamp(created_at),
                f"{amount:.2f}",
                neutralise(currency),
                neutralise(description),
            )
        )


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


# ------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------
@dataclass
class Batch:
    rows: int
    last_key: int


# --8<-- [start:keyset-batches]
def next_batch_bounds(user_id: int, after: int, size: int, use_copy: bool, window: Window = (None, None)) -> Batch:
    """Row count and last key of the next batch: an index-only range scan."""
    if not use_copy:
        keys = list(
            Transaction.objects.filter(window_q(window), user_id=user_id, pk__gt=after)
            .order_by("pk")
            .values_list("pk", flat=True)[:size]
        )
        return Batch(rows=len(keys), last_key=keys[-1] if keys else after)
    clause, params = window_sql(window)
    with connection.cursor() as cursor:
        sql = BATCH_BOUNDS.format(table=Transaction._meta.db_table, window=clause)
        cursor.execute(sql, [after, user_id, after, *params, size])
        rows, last_key = cursor.fetchone()
    return Batch(rows=rows, last_key=last_key)


def batch_chunks(
    user_id: int, after: int, upper: int, use_copy: bool, window: Window = (None, None)
) -> Iterator[bytes]:
    """The CSV bytes of rows with after < id <= upper (and in the window)."""
    if use_copy:
        clause, params = window_sql(window)
        select = (COPY_SELECT_IN_WINDOW if clause else COPY_SELECT).format(table=Transaction._meta.db_table)
        sql = "COPY (" + select + ") TO STDOUT (FORMAT csv)"
        # COPY hands out one message per row: gather them into ~1 MiB blocks so
        # storage sees a few large writes instead of a million small ones.
        block = bytearray()
        with connection.cursor() as cursor, cursor.cursor.copy(sql, [user_id, after, upper, *params]) as copy:
            for row in copy:
                block += row
                if len(block) >= BLOCK_SIZE:
                    yield bytes(block)
                    block.clear()
        if block:
            yield bytes(block)
        return
    rows = (
        Transaction.objects.filter(window_q(window), user_id=user_id, pk__gt=after, pk__lte=upper)
        .order_by("pk")
        .values_list(*HEADER)
        .iterator(chunk_size=2000)
    )
    block = []
    for line in orm_lines(rows):
        block.append(line)
        if len(block) == 2000:
            yield "".join(block).encode()
            block.clear()
    if block:
        yield "".join(block).encode()
        # --8<-- [end:keyset-batches]


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

    def part_name(self, index: int) -> str:
        # The owner in the name: a runner that lost its lease can never
        # overwrite a part the current runner wrote.
        return f"exports/{self.job_id}/part-{index:06d}-{self.owner}.csv"

    # --8<-- [start:runner]
    def run(self) -> ExportJob:
        job = ExportJob.objects.get(pk=self.job_id)
        window = job.window()
        if job.status == ExportJob.Status.PENDING:
            job.total_rows = Transaction.objects.filter(window_q(window), user_id=job.user_id).count()
            job.started_at = timezone.now()
            self._checkpoint(
                job, status=ExportJob.Status.RUNNING, total_rows=job.total_rows, started_at=job.started_at
            )
        if not job.parts:
            self._write_part(job, iter([HEADER_LINE]), rows=0, last_key=0)

        while True:
            if self.should_stop():
                raise StopRequested
            if settings.EXPORT_THROTTLE_SECONDS:
                time.sleep(settings.EXPORT_THROTTLE_SECONDS)
            batch = next_batch_bounds(job.user_id, job.last_key, self.batch_size, self.use_copy, window)
            if batch.rows == 0:
                break
            chunks = batch_chunks(job.user_id, job.last_key, batch.last_key, self.use_copy, window)
            self._write_part(job, chunks, batch.rows, batch.last_key)

        return self._finish(job)

    def _write_part(self, job: ExportJob, chunks: Iterator[bytes], rows: int, last_key: int) -> None:
        content = ChunkFile(chunks, name="part.csv")
        name = default_storage.save(self.part_name(len(job.parts)), content)
        try:
            self._checkpoint(
                job,
                parts=[*job.parts, name],
                processed_rows=job.processed_rows + rows,
                bytes_written=job.bytes_written + content.bytes,
                last_key=last_key,
            )
        except (LeaseLost, Cancelled):
            default_storage.delete(name)
            raise

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
            # --8<-- [end:runner]

    def _finish(self, job: ExportJob) -> ExportJob:
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
        """Remove every part of the job, including tails of runners that died."""
        directory = f"exports/{job.pk}"
        try:
            _, files = default_storage.listdir(directory)
        except FileNotFoundError:
            files = []
        for name in files:
            default_storage.delete(f"{directory}/{name}")
