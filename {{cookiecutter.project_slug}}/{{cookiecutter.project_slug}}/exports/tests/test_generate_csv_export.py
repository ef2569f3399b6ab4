import csv
import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from ..models import ExportJob, Transaction
from ..tasks import HEADER, generate_csv_export


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def read_csv(job):
    with job.file.open("rb") as handle:
        return list(csv.reader(io.StringIO(handle.read().decode())))


def test_exports_only_the_users_rows_in_key_order(user, monkeypatch, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    monkeypatch.setattr("{{ cookiecutter.project_slug }}.exports.tasks.BATCH_SIZE", 7)  # several batches
    other = get_user_model().objects.create_user("bob", "bob@example.com", "pw")
    for owner in (user, other):
        Transaction.objects.bulk_create(
            Transaction(
                user=owner, created_at="2026-01-01T00:00:00Z", amount=Decimal(i), currency="EUR", description="x"
            )
            for i in range(30)
        )
    job = ExportJob.objects.create(user=user)

    assert generate_csv_export(job.pk) == "completed"

    job.refresh_from_db()
    rows = read_csv(job)
    assert rows[0] == HEADER
    ids = [int(row[0]) for row in rows[1:]]
    assert ids == sorted(Transaction.objects.filter(user=user).values_list("pk", flat=True))
    assert job.processed_rows == 30
    assert job.status == ExportJob.Status.COMPLETED


def test_empty_export_has_the_header_only(user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    job = ExportJob.objects.create(user=user)
    generate_csv_export(job.pk)
    job.refresh_from_db()
    assert read_csv(job) == [HEADER]


def test_completed_job_is_not_rewritten(user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    job = ExportJob.objects.create(user=user)
    generate_csv_export(job.pk)
    job.refresh_from_db()
    name = job.file.name

    assert generate_csv_export(job.pk) == "already-completed"
    job.refresh_from_db()
    assert job.file.name == name


def test_missing_job_is_logged(db, caplog):
    assert generate_csv_export(123456) == "missing"
    assert "job 123456 does not exist" in caplog.text


def test_export_transactions_command_prints_the_job_id(transactional_db, user, settings, tmp_path, capsys):
    # transactional_db: the command dispatches on COMMIT, which a test transaction never reaches.
    settings.MEDIA_ROOT = tmp_path
    call_command("export_transactions", user="ada", wait=True)
    job_id = int(capsys.readouterr().out.strip())
    assert ExportJob.objects.get(pk=job_id).status == ExportJob.Status.COMPLETED
