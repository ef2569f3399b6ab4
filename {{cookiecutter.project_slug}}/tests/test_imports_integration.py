"""Uploads through the site, imported by the real export pool: one that succeeds, one that
fails, and one whose worker is killed half-way through its COPY."""

import os
import signal

from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.imports.models import TransactionImport
from {{ cookiecutter.project_slug }}.imports.tasks import process_transaction_import

from .conftest import wait_for

ROWS = 5_000  # five batches of IMPORT_BATCH_SIZE
HEADER = "created_at,amount,currency,description\n"


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
    assert not (live_celery.media_root / pending.file.name).exists()  # imported: the upload is deleted
    # The pool the topology gives long work (config/topology.py), not default's.
    assert f"task={process_transaction_import.name} id=" in live_celery.log("worker-export")
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
    assert live_celery.log("worker-export").count(f"import {done.pk} failed") == 1
    assert "(line 2: created_at must be" in client.get("/imports/").content.decode()


def copying(table: str) -> list[tuple[int, int]]:
    """(backend pid, rows so far) of each COPY into ``table`` under way (pg_stat_progress_copy)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid, tuples_processed FROM pg_stat_progress_copy WHERE relid = %s::regclass", [table])
        return cursor.fetchall()


def backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is not None


# --8<-- [start:import-killed]
def test_a_worker_killed_mid_import_leaves_no_row_and_the_retry_imports_each_once(live_celery, client):
    user = get_user_model().objects.create_user("ken")
    client.force_login(user)
    rows = 20_000  # 20 batches of 1,000 at 0.2 s each (IMPORT_THROTTLE_SECONDS): about 4 s
    table = Transaction._meta.db_table
    lines = [f"2026-10-01T10:00:00+00:00,{n}.25,EUR,row {n}" for n in range(rows)]
    pending = upload(client, HEADER + "\n".join(lines) + "\n")

    # Half-way: Postgres has taken thousands of the file's rows through the COPY.
    ((backend, _),) = wait_for(
        lambda: [copy for copy in copying(table) if copy[1] >= 5_000], message="the import's COPY to be half-way"
    )
    host = live_celery.hostname("worker-export")
    active = process_transaction_import.app.control.inspect(destination=[host], timeout=2.0).active()[host]
    (running,) = [task for task in active if task["name"] == process_transaction_import.name]
    os.kill(running["worker_pid"], signal.SIGKILL)  # the OOM killer picks the pool child

    # Postgres ends the dead child's session and rolls its transaction back:
    # not one of the rows it had sent is there.
    wait_for(lambda: not backend_alive(backend), message="the killed worker's database session to end")
    assert not Transaction.objects.filter(user=user).exists()
    assert TransactionImport.objects.get(pk=pending.pk).status == TransactionImport.Status.PENDING

    # The pool retries the task (retry_on_worker_lost): the import runs again from
    # the start of the file and commits every row once.
    done = wait_for(lambda: finished(pending.pk), 120, "the retried import")
    assert (done.status, done.rows) == (TransactionImport.Status.COMPLETED, rows)
    imported = Transaction.objects.filter(user=user)
    assert imported.count() == rows
    assert imported.values("description").distinct().count() == rows  # no line twice
    # --8<-- [end:import-killed]
