"""The export engine and task, run in-process. tests/test_exports_integration.py kills real workers."""

import csv
import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from celery.exceptions import Retry, SoftTimeLimitExceeded
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from .. import csv_export
from ..csv_export import HEADER, ExportFileDamaged, ExportRunner, LeaseLost, StopRequested
from ..models import ExportJob, Transaction
from ..tasks import export_watchdog, generate_csv_export

TRICKY = [
    "Coffee Corner #1234",
    'He said "hi", twice',
    "line\nbreak",
    "",
    '=HYPERLINK("http://evil","click")',
    "+1 555 0100",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(A1:A2)",
    "\tleading tab",
    "\rleading return",
    "Zürich café ☕",
    # Where a spreadsheet that splits on ";", tabs or lines would start a cell inside ours:
    "x;=cmd|' /C calc'!A0",
    "x\t=cmd|' /C calc'!A0",
    'Rent; March; "=1+1"',
    "two\nlines\r\n @SUM(A1:A2)",
    "\t=a tab, then a formula",
    "Rent; March - April",  # no formula after a break: unchanged
]


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.EXPORT_BATCH_SIZE = 4  # several batches even for a few rows


@pytest.fixture(params=["append", "parts"])
def storage_kind(request, monkeypatch):
    """Both ways of writing: one file appended to (local disk), and part files (storages that cannot append, S3)."""
    if request.param == "parts":
        monkeypatch.setattr(csv_export, "appends_in_place", lambda: False)
    return request.param


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def add_rows(user, descriptions=TRICKY, amounts=None):
    start = timezone.now().replace(microsecond=120000) - timedelta(days=1)  # a fraction, as Postgres trims it
    Transaction.objects.bulk_create(
        Transaction(
            user=user,
            created_at=start + timedelta(minutes=i),
            amount=(amounts or [Decimal("-12.50"), Decimal("99.99"), Decimal("0.10")])[i % 3],
            currency="EUR",
            description=text,
        )
        for i, text in enumerate(descriptions)
    )


def export_bytes(user, **runner_options) -> bytes:
    job = ExportJob.objects.create(user=user)
    runner = ExportRunner(job.pk, **runner_options)
    assert ExportJob.claim(job.pk, runner.owner)
    job = runner.run()
    with job.file.open("rb") as handle:
        return handle.read()


def rows_of(data: bytes):
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def files_in_job_directory(job) -> list[str]:
    return default_storage.listdir(f"exports/{job.pk}")[1]


def test_exports_only_the_users_rows_in_key_order(user, storage_kind):
    other = get_user_model().objects.create_user("bob", "bob@example.com", "pw")
    add_rows(user)
    add_rows(other)
    job = ExportJob.objects.create(user=user)

    assert generate_csv_export(job.pk) == "completed"

    job.refresh_from_db()
    with job.file.open("rb") as handle:
        data = handle.read()
    rows = rows_of(data)
    assert tuple(rows[0]) == HEADER
    assert [int(row[0]) for row in rows[1:]] == list(
        Transaction.objects.filter(user=user).order_by("pk").values_list("pk", flat=True)
    )
    assert (job.status, job.processed_rows, job.total_rows) == (ExportJob.Status.COMPLETED, len(TRICKY), len(TRICKY))
    assert job.bytes_written == len(data)
    assert job.lease_owner == ""
    # Parts cleaned up; appended in place, the one file is the export.
    assert files_in_job_directory(job) == ([Path(job.file.name).name] if storage_kind == "append" else [])


def test_formula_cells_are_neutralised_and_numbers_kept(user):
    add_rows(user)
    rows = rows_of(export_bytes(user))[1:]
    descriptions = [row[4] for row in rows]
    assert descriptions[4].startswith("'=HYPERLINK")
    assert descriptions[5] == "'+1 555 0100"
    assert descriptions[6].startswith("'-2+3")
    assert descriptions[7] == "'@SUM(A1:A2)"
    assert descriptions[8] == "'\tleading tab"
    assert descriptions[9] == "'\rleading return"
    assert descriptions[1] == 'He said "hi", twice'  # quoting survives the round trip
    assert rows[0][2] == "-12.50"  # a negative amount is a number, not a formula
    # A formula after a ";", tab or line break, past spaces and quotes, gets its own apostrophe.
    assert descriptions[11:] == [
        "x;'=cmd|' /C calc'!A0",
        "x\t'=cmd|' /C calc'!A0",
        'Rent; March; "\'=1+1"',
        "two\nlines\r\n '@SUM(A1:A2)",
        "'\t'=a tab, then a formula",
        "Rent; March - April",
    ]


@pytest.mark.parametrize("separator", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_no_cell_is_a_formula_whatever_a_spreadsheet_splits_on(user, separator):
    """Read as Excel reads a CSV where ";" is the list separator, or a reader told to split on tabs.

    Such a reader honours only quotes that open its cell (as Python's csv module
    does) and ends a row at any line break: every cell it sees must be text.
    """
    add_rows(user)
    data = export_bytes(user).decode()
    rows = list(csv.reader(io.StringIO(data, newline=""), delimiter=separator))[1:]
    if separator == ",":
        cells = [row[i] for row in rows for i in (3, 4)]  # the text columns (an amount may be negative)
    else:
        cells = [cell.lstrip(' "') for row in rows for cell in row]
    formulas = [cell for cell in cells if cell.startswith(("=", "+", "-", "@"))]
    assert formulas == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="COPY needs Postgres")
def test_copy_and_orm_paths_write_the_same_bytes(user):
    add_rows(user)
    assert export_bytes(user, use_copy=True) == export_bytes(user, use_copy=False)


def test_empty_export_is_the_header_only(user):
    assert export_bytes(user) == b"id,created_at,amount,currency,description\n"


def test_both_ways_of_writing_give_the_same_bytes(user, monkeypatch):
    add_rows(user, descriptions=TRICKY * 3)
    appended = export_bytes(user)
    monkeypatch.setattr(csv_export, "appends_in_place", lambda: False)
    assert export_bytes(user) == appended


def test_resume_after_a_stop_is_byte_identical_and_ignores_a_partial_tail(user, storage_kind):
    add_rows(user, descriptions=[f"row {i}" for i in range(30)])
    clean = export_bytes(user)
    job = ExportJob.objects.create(user=user)

    batches = iter(range(100))
    first = ExportRunner(job.pk, should_stop=lambda: next(batches) >= 3)
    assert ExportJob.claim(job.pk, first.owner)
    with pytest.raises(StopRequested):
        first.run()
    job.refresh_from_db()
    assert job.processed_rows == 3 * 4
    # The tail a runner killed mid-batch leaves behind: bytes past its checkpoint
    # in its file, or a part no checkpoint names.
    if storage_kind == "append":
        with default_storage.open(job.parts[-1], "ab") as handle:
            handle.write(b"9,torn")
    else:
        default_storage.save(f"exports/{job.pk}/part-{len(job.parts):06d}-{first.owner}.csv", ContentFile(b"9,torn"))
    ExportJob.release(job.pk, first.owner)

    assert generate_csv_export(job.pk) == "completed"

    job.refresh_from_db()
    with job.file.open("rb") as handle:
        assert handle.read() == clean
    assert files_in_job_directory(job) == ([Path(job.file.name).name] if storage_kind == "append" else [])


class Killed(BaseException):
    """What SIGKILL does to a runner: it stops there, nothing cleans up, its lease stays taken."""


def test_a_runner_killed_after_writing_past_its_checkpoint_resumes_byte_identical(user, monkeypatch):
    add_rows(user, descriptions=[f"row {i}" for i in range(30)])
    clean = export_bytes(user)
    job = ExportJob.objects.create(user=user)
    checkpoint = ExportRunner._checkpoint

    def killed_before_the_fourth_batch_is_checkpointed(runner, job, **changes):
        if changes.get("processed_rows") == 4 * 4:
            raise Killed
        return checkpoint(runner, job, **changes)

    monkeypatch.setattr(ExportRunner, "_checkpoint", killed_before_the_fourth_batch_is_checkpointed)
    first = ExportRunner(job.pk)
    assert ExportJob.claim(job.pk, first.owner)
    with pytest.raises(Killed):
        first.run()
    monkeypatch.undo()
    job.refresh_from_db()
    (first_file,) = job.parts
    assert job.processed_rows == 3 * 4
    assert default_storage.size(first_file) > job.bytes_written  # a whole batch past the checkpoint
    ExportJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert generate_csv_export(job.pk) == "completed"  # what the watchdog sends once the lease expired

    job.refresh_from_db()
    with job.file.open("rb") as handle:
        assert handle.read() == clean
    assert job.parts[0] == first_file
    assert job.file.name == job.parts[1] != first_file  # a second runner, its own file
    assert job.bytes_written == len(clean)
    assert files_in_job_directory(job) == [Path(job.file.name).name]  # the first runner's file is gone


def stopped_after_two_batches(user) -> tuple[ExportJob, ExportRunner]:
    """A job of 30 rows whose first runner stopped after two checkpointed batches (its lease still held)."""
    add_rows(user, descriptions=[f"row {i}" for i in range(30)])
    job = ExportJob.objects.create(user=user)
    first = ExportRunner(job.pk, should_stop=iter([False, False, True]).__next__)
    assert ExportJob.claim(job.pk, first.owner)
    with pytest.raises(StopRequested):
        first.run()
    job.refresh_from_db()
    return job, first


def test_a_file_shorter_than_its_checkpoint_is_not_resumed(user):
    job, first = stopped_after_two_batches(user)
    with default_storage.open(job.parts[-1], "r+b") as handle:  # e.g. a write lost with a crashed disk
        handle.truncate(job.bytes_written - 1)
    ExportJob.release(job.pk, first.owner)

    second = ExportRunner(job.pk)
    assert ExportJob.claim(job.pk, second.owner)
    with pytest.raises(ExportFileDamaged):
        second.run()


def test_a_resumed_file_holds_its_prefix_before_the_previous_one_is_deleted(user, monkeypatch):
    # Found by the chaos soak: a resuming runner SIGKILLed just after it deleted the
    # previous runner's file lost the prefix still in its write buffer, and the next
    # resume failed the export with ExportFileDamaged.
    job, first = stopped_after_two_batches(user)
    (previous,) = job.parts
    ExportJob.release(job.pk, first.owner)

    second = ExportRunner(job.pk)
    on_disk, delete = {}, default_storage.delete

    def delete_and_look(name):
        # What a SIGKILL at this moment would leave of the second runner's file.
        on_disk[name] = Path(default_storage.path(second.file_name())).stat().st_size
        delete(name)

    monkeypatch.setattr(default_storage, "delete", delete_and_look)
    assert ExportJob.claim(job.pk, second.owner)
    second.run()
    assert on_disk[previous] == job.bytes_written


def test_a_live_lease_keeps_a_second_runner_out(user):
    add_rows(user)
    job = ExportJob.objects.create(user=user)
    assert ExportJob.claim(job.pk, "someone-else")

    assert generate_csv_export(job.pk) == "leased-elsewhere"

    job.refresh_from_db()
    assert (job.status, job.parts) == (ExportJob.Status.PENDING, [])


def test_a_runner_that_lost_its_lease_stops_writing(user, storage_kind):
    add_rows(user)
    job = ExportJob.objects.create(user=user)
    polls = []

    def lease_taken_over_after_one_batch():
        polls.append(1)
        if len(polls) == 2:  # e.g. the watchdog gave the job to a new runner
            ExportJob.objects.filter(pk=job.pk).update(lease_owner="the-new-runner")
        return False

    runner = ExportRunner(job.pk, should_stop=lease_taken_over_after_one_batch)
    assert ExportJob.claim(job.pk, runner.owner)
    with pytest.raises(LeaseLost):
        runner.run()

    job.refresh_from_db()
    assert job.processed_rows == 4  # the one batch checkpointed before the takeover
    on_disk = sorted(f"exports/{job.pk}/{name}" for name in files_in_job_directory(job))
    if storage_kind == "parts":
        assert len(job.parts) == 2  # the header and that batch
        assert on_disk == sorted(job.parts)  # its next part was removed
    else:
        # Its own file, which the next runner copies up to the checkpoint: the
        # batch it wrote after losing the lease is never used.
        assert on_disk == job.parts == [runner.file_name()]
        assert default_storage.size(runner.file_name()) > job.bytes_written


def test_soft_time_limit_releases_the_lease_and_the_retry_continues(user, monkeypatch):
    """Out of time is not out of progress: the retry resumes from the last checkpoint."""
    add_rows(user, descriptions=[f"row {i}" for i in range(30)])
    clean = export_bytes(user)
    job = ExportJob.objects.create(user=user)
    write_part, calls = ExportRunner._write_part, []

    def soft_limit_during_the_third_batch(runner, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the header part, two batches, then the pool's soft limit strikes
            raise SoftTimeLimitExceeded
        return write_part(runner, *args, **kwargs)

    monkeypatch.setattr(ExportRunner, "_write_part", soft_limit_during_the_third_batch)
    with pytest.raises(Retry):
        generate_csv_export(job.pk)

    job.refresh_from_db()
    assert (job.status, job.processed_rows, job.lease_owner) == (ExportJob.Status.RUNNING, 2 * 4, "")
    assert generate_csv_export(job.pk) == "completed"  # the retry: no lease to wait for
    job.refresh_from_db()
    with job.file.open("rb") as handle:
        assert handle.read() == clean


def test_watchdog_redispatches_jobs_whose_runner_died(user):
    add_rows(user)
    dead = ExportJob.objects.create(user=user)
    ExportJob.objects.filter(pk=dead.pk).update(
        status=ExportJob.Status.RUNNING, lease_owner="dead", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    alive = ExportJob.objects.create(user=user)
    assert ExportJob.claim(alive.pk, "alive")

    assert export_watchdog() == [dead.pk]  # runs the export eagerly here

    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == ExportJob.Status.COMPLETED
    assert alive.status == ExportJob.Status.PENDING


def test_completed_job_is_not_rewritten(user):
    job = ExportJob.objects.create(user=user)
    generate_csv_export(job.pk)
    job.refresh_from_db()
    name = job.file.name

    assert generate_csv_export(job.pk) == "already-completed"
    job.refresh_from_db()
    assert job.file.name == name


def test_missing_job_is_logged_and_not_retried(db, caplog):
    assert generate_csv_export(123456) == "missing"
    assert "job 123456 does not exist" in caplog.text


def test_export_transactions_command_prints_the_job_id(transactional_db, user, capsys):
    # transactional_db: the command dispatches on COMMIT, which a test transaction never reaches.
    add_rows(user)
    call_command("export_transactions", user="ada", wait=True)
    job_id = int(capsys.readouterr().out.strip())
    assert ExportJob.objects.get(pk=job_id).status == ExportJob.Status.COMPLETED


def test_start_progress_and_download(user, client, django_capture_on_commit_callbacks):
    add_rows(user)
    client.force_login(user)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("exports:start"))
    job = ExportJob.objects.get()
    assert len(callbacks) == 1  # dispatched on commit
    assert response.url == reverse("exports:detail", args=[job.pk])

    progress = client.get(reverse("exports:progress", args=[job.pk])).json()
    assert progress["status"] == "completed"
    assert progress["processed_rows"] == progress["total_rows"] == len(TRICKY)
    download = client.get(progress["download_url"])
    assert download.status_code == 200
    assert b"".join(download.streaming_content).startswith(b"id,created_at")


def test_the_list_and_the_page_count_a_finished_exports_rows_alike(user, client):
    job = ExportJob.objects.create(
        user=user,
        status=ExportJob.Status.COMPLETED,
        processed_rows=10_000,
        total_rows=10_000,
        finished_at=timezone.now(),
    )
    client.force_login(user)

    listing = client.get(reverse("exports:list")).content.decode()
    detail = client.get(reverse("exports:detail", args=[job.pk])).content.decode()

    assert "10,000 of 10,000 rows" in listing  # thousands separated, as the page's script writes them
    assert '<p id="progress">10,000 of 10,000 rows' in detail  # there before the first poll


def test_only_the_owner_sees_or_downloads_an_export(user, client):
    job = ExportJob.objects.create(user=user)
    generate_csv_export(job.pk)
    intruder = get_user_model().objects.create_user("eve", "eve@example.com", "pw")
    client.force_login(intruder)

    for name in ("detail", "progress", "download"):
        assert client.get(reverse(f"exports:{name}", args=[job.pk])).status_code == 404


def test_watchdog_runs_every_minute_on_the_default_pool(settings):
    from config.celery_app import app

    entry = settings.CELERY_BEAT_SCHEDULE["export-watchdog"]
    assert entry["task"] == export_watchdog.name
    assert str(entry["schedule"]) == str(timezone.timedelta(minutes=1)) or entry["schedule"].minute == set(range(60))
    assert app.amqp.router.route({}, export_watchdog.name)["queue"].name == "default"


def test_export_runs_eagerly_from_a_thread(transactional_db, user):
    """Eager mode under a threaded dev server: no signal handlers outside the main thread."""
    import threading

    add_rows(user)
    job = ExportJob.objects.create(user=user)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(generate_csv_export(job.pk)))
    thread.start()
    thread.join()
    assert outcome == ["completed"]
