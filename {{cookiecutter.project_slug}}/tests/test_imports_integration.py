"""An upload through the site, imported by the real default pool; and one that fails."""

from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.imports.models import TransactionImport
from {{ cookiecutter.project_slug }}.imports.tasks import process_transaction_import

from .conftest import wait_for

ROWS = 5_000  # five batches of IMPORT_BATCH_SIZE


def upload(client, text: str) -> TransactionImport:
    response = client.post("/imports/", {"file": SimpleUploadedFile("t.csv", text.encode(), "text/csv")})
    assert response.status_code == 302
    return TransactionImport.objects.latest("created_at")


def finished(pk: int) -> TransactionImport | None:
    row = TransactionImport.objects.get(pk=pk)
    return row if row.status != TransactionImport.Status.PENDING else None


def test_an_uploaded_csv_is_imported_by_a_worker(live_celery, client):
    user = get_user_model().objects.create_user("grace")
    client.force_login(user)
    lines = [f"2026-10-01T10:00:00+00:00,{n}.25,EUR,row {n}" for n in range(ROWS)]

    pending = upload(client, "created_at,amount,currency,description\n" + "\n".join(lines) + "\n")
    done = wait_for(lambda: finished(pending.pk), 60, "the import")

    assert (done.status, done.rows) == (TransactionImport.Status.COMPLETED, ROWS)
    assert Transaction.objects.filter(user=user).count() == ROWS
    assert f"task={process_transaction_import.name} id=" in live_celery.log("worker-default")  # its pool ran it
    page = client.get("/imports/").content.decode()
    assert f"Import {done.pk}</td>" in page
    assert "Completed" in page


def test_an_invalid_upload_fails_once_with_its_reason_and_no_dead_letter(live_celery, client):
    user = get_user_model().objects.create_user("linus")
    client.force_login(user)

    pending = upload(client, "created_at,amount,currency,description\n2026-10-01,ten,EUR,x\n")
    done = wait_for(lambda: finished(pending.pk), 60, "the import")

    assert done.status == TransactionImport.Status.FAILED
    assert done.error == "line 2: created_at must be an ISO date and time, amount a number"
    assert not Transaction.objects.filter(user=user).exists()
    # A bad file is the user's to fix: no retries, no dead letter for an operator.
    assert not FailedTask.objects.filter(task_name=process_transaction_import.name).exists()
    assert live_celery.log("worker-default").count(f"import {done.pk} failed") == 1
    assert "(line 2: created_at must be" in client.get("/imports/").content.decode()
