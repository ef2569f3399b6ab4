"""Import an uploaded CSV of transactions: streamed, validated, all or nothing, near COPY's speed."""

import csv
import io
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from itertools import islice
from operator import itemgetter

from celery import shared_task
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from ..core.task_base import BaseTask
from ..exports.models import Transaction
from .models import TransactionImport

logger = logging.getLogger(__name__)

# The export's own columns (exports/csv_export.py): an export imports as it is.
# An "id" column is allowed and ignored: imported rows get new ids. Other extra
# columns are ignored too.
COLUMNS = ("created_at", "amount", "currency", "description")
# What Transaction.amount holds (12 digits, 2 after the point: 9999999999.99), read
# from the field so that the check follows the column. The rest of the system is
# sized for any number of such amounts: a statement line holds the sum of as many
# of them as it can count (statements/models.py).
_AMOUNT = Transaction._meta.get_field("amount")
LARGEST_AMOUNT = Decimal(10) ** (_AMOUNT.max_digits - _AMOUNT.decimal_places) - Decimal(10) ** -_AMOUNT.decimal_places
# What one row becomes: the Transaction columns after user_id, in COPY's order.
Row = tuple[int, datetime, Decimal, str, str]


class InvalidFile(ValueError):
    """The file is not a transactions CSV: the message says where, for the user. Never retried."""


def parse_row(user_id: int, fields: tuple[str, str, str, str], line: int, zone: tzinfo) -> Row:
    """One line's values, checked and converted; raises InvalidFile saying what is wrong with it."""
    created_at, amount, currency, description = fields
    try:
        when = datetime.fromisoformat(created_at)
        money = Decimal(amount)
    except (ValueError, InvalidOperation):
        raise InvalidFile(f"line {line}: created_at must be an ISO date and time, amount a number") from None
    if when.tzinfo is None:
        when = timezone.make_aware(when, zone)  # in the site's time zone
    if not money.is_finite() or money.as_tuple().exponent < -_AMOUNT.decimal_places or abs(money) > LARGEST_AMOUNT:
        raise InvalidFile(f"line {line}: amount {amount!r} is not an amount of money")
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise InvalidFile(f"line {line}: currency {currency!r} is not a three-letter code such as EUR")
    if len(description) > 255:
        raise InvalidFile(f"line {line}: description longer than 255 characters")
    if "\x00" in description:  # Postgres text cannot hold it
        raise InvalidFile(f"line {line}: description contains a NUL character")
    return user_id, when, money, currency, description


# --8<-- [start:read-rows]
def read_rows(binary, user_id: int) -> Iterator[Row]:
    """The file's rows, validated, one at a time: never more than one line in memory.

    Raises InvalidFile at the first bad line, with its number (the header is line 1).
    """
    # utf-8-sig: spreadsheets put a byte-order mark in front of the header.
    reader = csv.reader(io.TextIOWrapper(binary, encoding="utf-8-sig", newline=""))
    zone = timezone.get_current_timezone()
    try:
        header = next(reader, [])
        missing = [column for column in COLUMNS if column not in header]
        if missing:
            raise InvalidFile(f"line 1: the header has no {', '.join(missing)} column")
        pick, width = itemgetter(*(header.index(column) for column in COLUMNS)), len(header)
        line = 1
        for fields in reader:
            if not fields:  # a blank line
                continue
            line += 1
            if len(fields) != width:
                raise InvalidFile(f"line {line}: expected {width} fields")
            yield parse_row(user_id, pick(fields), line, zone)
    except UnicodeDecodeError:
        raise InvalidFile("the file is not UTF-8 text") from None
    except csv.Error as error:
        raise InvalidFile(f"line {reader.line_num}: {error}") from None
    # --8<-- [end:read-rows]


def batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while batch := list(islice(rows, size)):
        yield batch
        if settings.IMPORT_THROTTLE_SECONDS:
            time.sleep(settings.IMPORT_THROTTLE_SECONDS)


# --8<-- [start:copy-rows]
def copy_rows(chunks: Iterable[list[Row]]) -> int:
    """Postgres: every row through one ``COPY ... FROM STDIN``; returns how many.

    COPY is Postgres's bulk path: one statement streams all the rows, with no SQL
    to build and no round trip per batch. Python's part is to read and check each
    line (one core) while Postgres inserts and indexes the rows already sent (the
    other). Raising from ``chunks`` (a bad line) aborts the COPY: no row of it stays.
    """
    columns = ", ".join(connection.ops.quote_name(name) for name in ("user_id", *COLUMNS))
    sql = f"COPY {connection.ops.quote_name(Transaction._meta.db_table)} ({columns}) FROM STDIN"
    count = 0
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for chunk in chunks:
            for row in chunk:
                copy.write_row(row)
            count += len(chunk)
    # Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: Postgres would check
    # each row's user at COMMIT (a third of a 2M-row import's time). Checked here
    # instead (SET CONSTRAINTS ALL IMMEDIATE), the cost is in the import's own time,
    # before it is marked COMPLETED, not hidden in the COMMIT after it.
    connection.check_constraints()
    return count
    # --8<-- [end:copy-rows]


def create_rows(chunks: Iterable[list[Row]]) -> int:
    """Other databases (SQLite in development): the ORM's bulk INSERT, a batch at a time."""
    fields = ("user_id", *COLUMNS)
    return sum(
        len(Transaction.objects.bulk_create(Transaction(**dict(zip(fields, row, strict=True))) for row in chunk))
        for chunk in chunks
    )


# --8<-- [start:import-rows]
def import_rows(upload: TransactionImport) -> int:
    """Insert the file's rows; returns how many. Raises InvalidFile.

    Memory stays flat whatever the file's size: the CSV is read as a stream from
    storage and only one batch of IMPORT_BATCH_SIZE rows is held at a time. The
    caller's transaction makes it all or nothing: a bad line 90 000 leaves no rows
    behind, and neither does a worker killed half-way (Postgres rolls back the
    open transaction of a connection that died).
    """
    with upload.file.open("rb") as binary:
        rows = batches(read_rows(binary, upload.user_id), settings.IMPORT_BATCH_SIZE)
        return copy_rows(rows) if connection.vendor == "postgresql" else create_rows(rows)
    # --8<-- [end:import-rows]


# --8<-- [start:refresh-statistics]
def refresh_statistics(model, added: int) -> bool:
    """ANALYZE the model's table if ``added`` rows are many for its size; returns whether it did.

    Postgres plans every query from statistics about the table (how many rows, how
    many per user). Autovacuum refreshes them only after its own delay, and never
    where it is turned off: right after a large import the planner still believes
    the table (or the user) holds the few rows it had before, and may pick a plan
    made for a few rows (the next export, the monthly statements). The threshold is
    autovacuum's own default (50 rows plus 10% of the table): the same ANALYZE
    autovacuum would run anyway, now instead of later. It reads a sample of a fixed
    size (300 x default_statistics_target rows), so it costs about as much on a big
    table as on a small one; SKIP_LOCKED: if one is already running, that one will do.
    Run inside a transaction it counts that transaction's own new rows, and its
    statistics are published with them at COMMIT.
    """
    if connection.vendor != "postgresql":
        return False
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
        (estimate,) = cursor.fetchone()  # -1: never analyzed
        if added < 50 + 0.1 * max(estimate, 0):
            return False
        cursor.execute(f"ANALYZE (SKIP_LOCKED) {connection.ops.quote_name(table)}")
    return True
    # --8<-- [end:refresh-statistics]


# --8<-- [start:discard-upload]
def discard_upload(name: str) -> None:
    """Delete an import's uploaded file once its outcome has committed.

    Imported, its rows are in the table; failed, the user uploads a corrected
    file. Kept, every upload would stay in storage for ever. Only after COMMIT:
    rolled back, the import is still pending and its retry needs the file. A
    worker killed between the two leaves the file behind, for the nightly
    ``cleanup_expired_imports``.
    """
    if name:
        transaction.on_commit(lambda: default_storage.delete(name))
        # --8<-- [end:discard-upload]


def mark_failed(import_id: int, reason: str) -> bool:
    pending = TransactionImport.objects.filter(pk=import_id, status=TransactionImport.Status.PENDING)
    name = pending.values_list("file", flat=True).first()
    failed = pending.update(
        status=TransactionImport.Status.FAILED, error=reason[:2000], finished_at=timezone.now(), file=""
    )
    if failed:
        discard_upload(name)
    return bool(failed)


class ImportTask(BaseTask):
    """BaseTask, plus: an import that fails for good (storage down after every retry) says so on its row."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        mark_failed(args[0] if args else kwargs["import_id"], "the file could not be read; try again later")
        super().on_failure(exc, task_id, args, kwargs, einfo)


# --8<-- [start:process-import]
# OSError: storage hiccups (a network file system, S3 through a network) are
# worth a retry; a missing file is not, and is handled below.
@shared_task(base=ImportTask, autoretry_for=(OSError,))
def process_transaction_import(import_id: int) -> str:
    """Import an upload's rows into the user's transactions; the outcome is on its row.

    A missing row (deleted before the worker got to it) is logged and the task
    ends: no retry can bring it back. A missing file or an invalid line FAILS
    the import with the reason, at once, without retries. Idempotent: the rows
    and COMPLETED commit together, under a lock on the import's row, so a
    duplicate message waits, then finds the import finished and does nothing.
    """
    with transaction.atomic():
        upload = TransactionImport.objects.select_for_update().select_related("user").filter(pk=import_id).first()
        if upload is None:
            logger.warning("import %s: no such upload, nothing to do", import_id)
            return "missing"
        if upload.status != TransactionImport.Status.PENDING:
            return upload.status
        try:
            with transaction.atomic():  # a savepoint: a bad line undoes this import's rows only
                rows = import_rows(upload)
        except FileNotFoundError:
            reason = "the uploaded file is gone from storage; upload it again"
        except InvalidFile as error:
            reason = str(error)
        else:
            # In the import's transaction: the rows, their statistics and COMPLETED
            # become visible together, so whatever the user starts next is planned
            # for the rows that are there.
            if refresh_statistics(Transaction, rows):
                logger.info("import %s: analyzed %s after %s new rows", upload.pk, Transaction._meta.db_table, rows)
            TransactionImport.objects.filter(pk=upload.pk).update(
                status=TransactionImport.Status.COMPLETED, rows=rows, finished_at=timezone.now(), file=""
            )
            discard_upload(upload.file.name)
            logger.info("import %s: %s rows for %s", upload.pk, rows, upload.user)
            return TransactionImport.Status.COMPLETED
        mark_failed(upload.pk, reason)
        logger.info("import %s failed: %s", upload.pk, reason)
        return TransactionImport.Status.FAILED
        # --8<-- [end:process-import]


# --8<-- [start:cleanup]
@shared_task
def cleanup_expired_imports(dry_run: bool = False) -> list[int]:
    """Delete imports older than IMPORT_RETENTION_DAYS, and uploads no import names. Beat, daily, on "low".

    An upload normally goes as soon as its import has run (``discard_upload``).
    What is left: the file of an import that never ran (still pending after all
    that time: its message was lost), and orphans, files no row names, stored by
    a request whose transaction then rolled back, or kept by a worker killed
    between an import's COMMIT and the file's deletion. Returns the ids of the
    imports deleted (with ``dry_run``, that would be).
    """
    cutoff = timezone.now() - timedelta(days=settings.IMPORT_RETENTION_DAYS)
    expired = TransactionImport.objects.filter(created_at__lt=cutoff)
    ids = list(expired.values_list("pk", flat=True))
    orphans = orphaned_uploads(cutoff)
    if not dry_run:
        for upload in expired:
            if upload.file:
                upload.file.delete(save=False)
            upload.delete()
        for name in orphans:
            default_storage.delete(name)
    logger.info(
        "import cleanup: %s %s imports and %s orphaned uploads older than %s",
        "would delete" if dry_run else "deleted",
        len(ids),
        len(orphans),
        cutoff,
    )
    return ids


def orphaned_uploads(older_than: datetime) -> list[str]:
    """Files in the uploads' directory that no import names, last written before ``older_than``.

    The age spares an upload whose request is still between storing the file and COMMIT.
    """
    directory = TransactionImport._meta.get_field("file").upload_to.rstrip("/")
    try:
        _, files = default_storage.listdir(directory)
    except FileNotFoundError:  # nothing was ever uploaded
        return []
    named = set(TransactionImport.objects.exclude(file="").values_list("file", flat=True))
    names = (f"{directory}/{file}" for file in files)
    return [name for name in names if name not in named and default_storage.get_modified_time(name) < older_than]
    # --8<-- [end:cleanup]
