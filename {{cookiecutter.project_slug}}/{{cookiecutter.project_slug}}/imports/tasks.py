"""Import an uploaded CSV of transactions: streamed, validated, all or nothing."""

import csv
import io
import logging
from datetime import datetime
from decimal import Decimal, InvalidOperation

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..core.task_base import BaseTask
from ..exports.models import Transaction
from .models import TransactionImport

logger = logging.getLogger(__name__)

# The export's own columns (exports/csv_export.py): an export imports as it is.
# An "id" column is allowed and ignored: imported rows get new ids.
COLUMNS = ("created_at", "amount", "currency", "description")
LARGEST_AMOUNT = Decimal("9999999999.99")  # Transaction.amount: 12 digits, 2 after the point


class InvalidFile(ValueError):
    """The file is not a transactions CSV: the message says where, for the user. Never retried."""


def parse_row(user, row: dict, line: int) -> Transaction:
    try:
        created_at = datetime.fromisoformat(row["created_at"])
        amount = Decimal(row["amount"])
    except (ValueError, InvalidOperation):
        raise InvalidFile(f"line {line}: created_at must be an ISO date and time, amount a number") from None
    if timezone.is_naive(created_at):
        created_at = timezone.make_aware(created_at)  # in the site's time zone
    if not amount.is_finite() or amount.as_tuple().exponent < -2 or abs(amount) > LARGEST_AMOUNT:
        raise InvalidFile(f"line {line}: amount {row['amount']!r} is not an amount of money")
    currency, description = row["currency"], row["description"] or ""
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise InvalidFile(f"line {line}: currency {currency!r} is not a three-letter code such as EUR")
    if len(description) > 255:
        raise InvalidFile(f"line {line}: description longer than 255 characters")
    return Transaction(user=user, created_at=created_at, amount=amount, currency=currency, description=description)


# --8<-- [start:import-rows]
def import_rows(upload: TransactionImport) -> int:
    """Insert the file's rows, IMPORT_BATCH_SIZE at a time; returns how many. Raises InvalidFile.

    Memory stays flat whatever the file's size: the CSV is read as a stream from
    storage, and only one batch of rows is held at a time. The caller's
    transaction makes it all or nothing: a bad line 90 000 leaves no rows behind.
    """
    count, batch = 0, []
    with upload.file.open("rb") as binary:
        # utf-8-sig: spreadsheets put a byte-order mark in front of the header.
        reader = csv.DictReader(io.TextIOWrapper(binary, encoding="utf-8-sig", newline=""))
        try:
            missing = [column for column in COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise InvalidFile(f"line 1: the header has no {', '.join(missing)} column")
            for line, row in enumerate(reader, start=2):
                if None in row.values() or None in row:
                    raise InvalidFile(f"line {line}: expected {len(reader.fieldnames)} fields")
                batch.append(parse_row(upload.user, row, line))
                if len(batch) == settings.IMPORT_BATCH_SIZE:
                    count += len(Transaction.objects.bulk_create(batch))
                    batch = []
        except UnicodeDecodeError:
            raise InvalidFile("the file is not UTF-8 text") from None
        except csv.Error as error:
            raise InvalidFile(f"line {reader.line_num}: {error}") from None
    return count + len(Transaction.objects.bulk_create(batch))
    # --8<-- [end:import-rows]


def mark_failed(import_id: int, reason: str) -> bool:
    return bool(
        TransactionImport.objects.filter(pk=import_id, status=TransactionImport.Status.PENDING).update(
            status=TransactionImport.Status.FAILED, error=reason[:2000], finished_at=timezone.now()
        )
    )


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
            TransactionImport.objects.filter(pk=upload.pk).update(
                status=TransactionImport.Status.COMPLETED, rows=rows, finished_at=timezone.now()
            )
            logger.info("import %s: %s rows for %s", upload.pk, rows, upload.user)
            return TransactionImport.Status.COMPLETED
        mark_failed(upload.pk, reason)
        logger.info("import %s failed: %s", upload.pk, reason)
        return TransactionImport.Status.FAILED
        # --8<-- [end:process-import]
