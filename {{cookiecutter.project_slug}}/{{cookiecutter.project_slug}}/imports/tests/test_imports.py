"""Uploads fed to a task: the view stores the file, the task imports it (eagerly here)."""

import io
import os
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import close_old_connections, connection
from django.utils import timezone

from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.outbox import relay
from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage

from ..models import TooManyImports, TransactionImport
from ..tasks import (
    batches,
    cleanup_expired_imports,
    create_rows,
    process_transaction_import,
    read_rows,
    refresh_statistics,
)

GOOD = (
    "id,created_at,amount,currency,description\r\n"
    "1,2026-10-01T09:30:00+00:00,12.50,EUR,Coffee beans\r\n"
    '2,2026-10-02T18:00:00+00:00,-3.20,EUR,"Refund, partial"\r\n'
)


def csv_file(text: str, name: str = "transactions.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


@pytest.fixture
def user(db, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


@pytest.fixture
def client_of(client, user):
    client.force_login(user)
    return client


def test_an_upload_is_stored_and_imported_after_commit(client_of, user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_of.post("/imports/", {"file": csv_file(GOOD)})

    assert response.status_code == 302
    # The outbox publishes after COMMIT, not before; the import, run by it, deletes
    # the uploaded file after its own COMMIT.
    assert len(callbacks) == 2
    upload = TransactionImport.objects.get()
    assert (upload.status, upload.rows, upload.error) == (TransactionImport.Status.COMPLETED, 2, "")
    assert upload.file.name == ""  # imported: the upload is gone from storage
    rows = Transaction.objects.filter(user=user).order_by("created_at")
    assert [(row.amount, row.description) for row in rows] == [
        (Decimal("12.50"), "Coffee beans"),
        (Decimal("-3.20"), "Refund, partial"),
    ]
    assert OutboxMessage.objects.get().args == [upload.pk]


def test_a_bad_line_fails_the_import_with_its_line_and_imports_nothing(user, settings):
    settings.IMPORT_BATCH_SIZE = 1  # the first line's batch is inserted before line 3 fails
    upload = TransactionImport.objects.create(user=user, file=csv_file(GOOD + "3,yesterday,1.00,EUR,x\r\n"))

    assert process_transaction_import(upload.pk) == "failed"

    upload.refresh_from_db()
    assert upload.status == TransactionImport.Status.FAILED
    assert upload.error.startswith("line 4: created_at must be an ISO date")
    assert not Transaction.objects.exists()  # all or nothing


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("when,amount\r\n", "line 1: the header has no created_at, currency, description column"),
        ("created_at,amount,currency,description\r\n2026-10-01,1.001,EUR,x\r\n", "is not an amount of money"),
        ("created_at,amount,currency,description\r\n2026-10-01,1,euro,x\r\n", "three-letter code"),
        ("created_at,amount,currency,description\r\n2026-10-01,1,EUR\r\n", "line 2: expected 4 fields"),
        ("created_at,amount,currency,description\r\n2026-10-01,1,EUR,a,b\r\n", "line 2: expected 4 fields"),
        (
            "created_at,amount,currency,description\r\n2026-10-01,1,EUR,nul \x00 byte\r\n",
            "line 2: description contains a NUL",
        ),
        ("created_at,amount,currency,description\r\n2026-10-01,NaN,EUR,x\r\n", "line 2: amount 'NaN' is not"),
    ],
)
def test_invalid_files_fail_with_a_reason(user, text, error):
    upload = TransactionImport.objects.create(user=user, file=csv_file(text))

    assert process_transaction_import(upload.pk) == "failed"
    upload.refresh_from_db()
    assert error in upload.error


def test_a_file_gone_from_storage_fails_once_without_retries(user, eager_retries):
    upload = TransactionImport.objects.create(user=user, file=csv_file(GOOD))
    upload.file.storage.delete(upload.file.name)

    result = process_transaction_import.apply((upload.pk,))

    assert (result.status, result.result) == ("SUCCESS", "failed")
    upload.refresh_from_db()
    assert upload.error == "the uploaded file is gone from storage; upload it again"


def test_a_missing_row_is_logged_and_the_task_ends(db, caplog):
    assert process_transaction_import(404_404) == "missing"
    assert "import 404404: no such upload" in caplog.text


def test_a_finished_import_is_not_imported_twice(user):
    upload = TransactionImport.objects.create(user=user, file=csv_file(GOOD))
    process_transaction_import(upload.pk)

    assert process_transaction_import(upload.pk) == "completed"  # a duplicate message
    assert Transaction.objects.count() == 2


def test_the_form_refuses_a_file_too_large_or_not_a_csv(client_of, settings):
    settings.IMPORT_MAX_BYTES = 10
    assert "larger than" in client_of.post("/imports/", {"file": csv_file(GOOD)}).content.decode()
    settings.IMPORT_MAX_BYTES = 10_000
    response = client_of.post("/imports/", {"file": csv_file(GOOD, name="photo.png")})
    assert response.status_code == 400
    assert not TransactionImport.objects.exists()


def test_a_file_that_is_not_utf8_fails_with_that_reason(user):
    text = "created_at,amount,currency,description\r\n2026-10-01,1,EUR,Caf\xe9\r\n".encode("latin-1")
    upload = TransactionImport.objects.create(user=user, file=SimpleUploadedFile("t.csv", text))

    assert process_transaction_import(upload.pk) == "failed"
    upload.refresh_from_db()
    assert upload.error == "the file is not UTF-8 text"


def test_columns_in_any_order_blank_lines_and_a_byte_order_mark_are_read(user):
    text = "\ufeffdescription,currency,amount,created_at,note\r\n\r\nTea,GBP,2.00,2026-10-01T08:00:00,ignored\r\n"
    upload = TransactionImport.objects.create(user=user, file=csv_file(text))

    assert process_transaction_import(upload.pk) == "completed"
    row = Transaction.objects.get(user=user)
    assert (row.description, row.currency, row.amount) == ("Tea", "GBP", Decimal("2.00"))
    assert row.created_at.utcoffset() is not None  # a naive time is taken in the site's time zone


def test_the_orm_path_writes_the_same_rows(user):
    """SQLite in development has no COPY: the rows go in through bulk_create, a batch at a time."""
    rows = read_rows(io.BytesIO(GOOD.encode()), user.pk)

    assert create_rows(batches(rows, 1)) == 2
    assert sorted(Transaction.objects.filter(user=user).values_list("description", flat=True)) == [
        "Coffee beans",
        "Refund, partial",
    ]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="planner statistics are Postgres's")
def test_a_large_import_refreshes_the_planners_statistics(user):
    """The next query on the table (an export, the statements) is planned for the rows that are there."""
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Transaction._meta.db_table}")  # the statistics: an empty table
    lines = "".join(f"2026-10-01T09:30:00+00:00,{n}.00,EUR,row {n}\r\n" for n in range(400))
    upload = TransactionImport.objects.create(
        user=user, file=csv_file("created_at,amount,currency,description\r\n" + lines)
    )

    assert process_transaction_import(upload.pk) == "completed"

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN SELECT id FROM {Transaction._meta.db_table} WHERE user_id = %s", [user.pk])  # noqa: S608
        plan = " ".join(line for (line,) in cursor.fetchall())
    assert "rows=400 " in plan, plan  # the planner knows the user's 400 rows, not a guess


@pytest.mark.skipif(connection.vendor != "postgresql", reason="planner statistics are Postgres's")
def test_statistics_are_refreshed_only_when_the_new_rows_are_many_for_the_table(user):
    Transaction.objects.bulk_create(
        Transaction(user=user, created_at="2026-10-01T00:00:00Z", amount=1, currency="EUR", description="x")
        for _ in range(2_000)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Transaction._meta.db_table}")

    # autovacuum's own threshold: 50 rows plus 10% of the table.
    assert not refresh_statistics(Transaction, 249)
    assert refresh_statistics(Transaction, 250)


# ------------------------------------------------------------------------------
# How many imports a user may have waiting, and how long uploads are kept
# ------------------------------------------------------------------------------
def uploads_in_storage() -> list[str]:
    try:
        return sorted(default_storage.listdir("imports")[1])
    except FileNotFoundError:
        return []


def test_an_upload_beyond_the_users_limit_is_refused_before_its_file_is_stored(client_of, user, settings):
    settings.IMPORT_MAX_PENDING_PER_USER = 2
    # Two uploads whose imports have not run yet (their messages wait in the outbox here).
    assert client_of.post("/imports/", {"file": csv_file(GOOD)}).status_code == 302
    assert client_of.post("/imports/", {"file": csv_file(GOOD)}).status_code == 302

    refused = client_of.post("/imports/", {"file": csv_file(GOOD)})

    assert refused.status_code == 429
    assert "Import not started: you already have 2 imports waiting to run" in refused.content.decode()
    assert TransactionImport.objects.count() == 2
    assert len(uploads_in_storage()) == 2  # the refused file was never stored
    TransactionImport.receive(get_user_model().objects.create_user("bob"), csv_file(GOOD))  # bob's limit is his
    TransactionImport.objects.filter(user=user).update(status=TransactionImport.Status.COMPLETED)
    assert client_of.post("/imports/", {"file": csv_file(GOOD)}).status_code == 302  # finished ones do not count


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need Postgres")
@pytest.mark.django_db(transaction=True)
def test_uploads_at_the_same_moment_never_pass_the_limit(user, settings, monkeypatch):
    settings.IMPORT_MAX_PENDING_PER_USER = 2
    # Keep the imports waiting: run eagerly here, they would finish (and free the limit) at once.
    monkeypatch.setattr(relay, "publish_after_commit", lambda message_id: None)
    barrier, outcomes = threading.Barrier(6), []

    def upload():
        try:
            barrier.wait()
            TransactionImport.receive(user, csv_file(GOOD))
            outcomes.append("received")
        except TooManyImports:
            outcomes.append("refused")
        finally:
            close_old_connections()

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["received"] * 2 + ["refused"] * 4
    assert TransactionImport.objects.filter(user=user).count() == 2


def test_an_uploads_file_is_deleted_once_its_import_has_run(client_of, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client_of.post("/imports/", {"file": csv_file(GOOD)})
        client_of.post("/imports/", {"file": csv_file("when,amount\r\n")})

    completed, failed = TransactionImport.objects.order_by("pk")
    assert (completed.status, failed.status) == (TransactionImport.Status.COMPLETED, TransactionImport.Status.FAILED)
    assert (completed.file.name, failed.file.name) == ("", "")
    assert uploads_in_storage() == []


def test_cleanup_deletes_old_imports_and_the_files_no_import_names(user, settings, capsys):
    old = TransactionImport.objects.create(user=user, file=csv_file(GOOD))  # never ran: its message was lost
    recent = TransactionImport.objects.create(user=user, file=csv_file(GOOD))
    long_ago = timezone.now() - timedelta(days=settings.IMPORT_RETENTION_DAYS + 1)
    TransactionImport.objects.filter(pk=old.pk).update(created_at=long_ago)
    # A file a rolled-back request stored long ago, and one a request is committing right now.
    orphan = default_storage.save("imports/orphan.csv", ContentFile(b"x"))
    os.utime(default_storage.path(orphan), (long_ago.timestamp(), long_ago.timestamp()))
    default_storage.save("imports/committing.csv", ContentFile(b"x"))

    call_command("scheduled", "run", "expired-import-cleanup", "--dry-run")
    assert f"would act on [{old.pk}]" in capsys.readouterr().out
    assert len(uploads_in_storage()) == 4

    assert cleanup_expired_imports() == [old.pk]
    assert list(TransactionImport.objects.values_list("pk", flat=True)) == [recent.pk]
    assert uploads_in_storage() == sorted(["committing.csv", Path(recent.file.name).name])
    # Housekeeping waits behind everyday work, not on the export pool with the imports.
    assert cleanup_expired_imports.app.amqp.router.route({}, cleanup_expired_imports.name)["queue"].name == "low"
