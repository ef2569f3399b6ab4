"""Uploads fed to a task: the view stores the file, the task imports it (eagerly here)."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage

from ..models import TransactionImport
from ..tasks import process_transaction_import

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
    assert len(callbacks) == 1  # the outbox publishes after COMMIT, not before
    upload = TransactionImport.objects.get()
    assert (upload.status, upload.rows, upload.error) == (TransactionImport.Status.COMPLETED, 2, "")
    assert upload.file.name.startswith("imports/")
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
