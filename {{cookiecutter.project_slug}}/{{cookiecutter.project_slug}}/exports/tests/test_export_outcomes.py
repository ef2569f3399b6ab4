"""How an export ends other than COMPLETED, and who may start one: failed, cancelled, limited, reused.

Run in-process (eager). tests/test_exports_integration.py proves the same on real pools.
"""

import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import close_old_connections, connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from ...core.models import FailedTask
from ...outbox import relay
from ..csv_export import ExportRunner, StopRequested
from ..models import ExportJob, TooManyExports, Transaction
from ..tasks import export_watchdog, generate_csv_export
from .test_generate_csv_export import add_rows, rows_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.EXPORT_BATCH_SIZE = 4  # several batches even for a few rows
    settings.EXPORT_MAX_RUNNING_PER_USER = 2


@pytest.fixture
def worker_like():
    """Run ``apply()`` the way a worker runs a task: retries, then the failure hooks, instead of raising at once."""
    from config.celery_app import app

    app.conf.task_eager_propagates = False
    try:
        yield
    finally:
        app.conf.task_eager_propagates = True


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def poison(job: ExportJob) -> None:
    """A file where the job's part directory must go: storage refuses every part, every time."""
    Path(default_storage.path(f"exports/{job.pk}")).parent.mkdir(parents=True, exist_ok=True)
    Path(default_storage.path(f"exports/{job.pk}")).write_text("not a directory")


def fail_on_call(monkeypatch, number: int, error: Exception, then=None):
    """Make ExportRunner._write_part raise ``error`` on its ``number``-th call (and after, unless ``then``)."""
    write_part, calls = ExportRunner._write_part, []

    def write(runner, *args, **kwargs):
        calls.append(1)
        if len(calls) == number or (len(calls) > number and then is None):
            raise error
        return write_part(runner, *args, **kwargs)

    monkeypatch.setattr(ExportRunner, "_write_part", write)
    return calls


# ------------------------------------------------------------------------------
# Failing for good
# ------------------------------------------------------------------------------
def test_an_export_that_always_fails_ends_failed_with_its_reason_and_one_dead_letter(user, settings, worker_like):
    add_rows(user)
    job = ExportJob.objects.create(user=user)
    poison(job)

    result = generate_csv_export.apply((job.pk,))  # eager: the retries run in line, then the last one fails
    assert isinstance(result.result, FileExistsError)

    job.refresh_from_db()
    assert job.status == ExportJob.Status.FAILED
    assert job.error.startswith("FileExistsError: ")
    assert (job.lease_owner, job.lease_expires_at) == ("", None)
    assert job.finished_at is not None
    failed = FailedTask.objects.get()
    assert failed.args == [job.pk]
    assert failed.retries == settings.TASK_RETRY_POLICY["max_retries"]  # transient: retried, then given up


def test_a_permanent_error_fails_at_once_without_retries(user, monkeypatch, worker_like):
    add_rows(user)
    job = ExportJob.objects.create(user=user)
    calls = fail_on_call(monkeypatch, 2, ValueError("a bug, not a hiccup"))

    assert generate_csv_export.apply((job.pk,)).state == "FAILURE"

    job.refresh_from_db()
    assert (job.status, job.error) == (ExportJob.Status.FAILED, "ValueError: a bug, not a hiccup")
    assert len(calls) == 2  # no retry
    assert FailedTask.objects.get().retries == 0
    assert default_storage.listdir(f"exports/{job.pk}")[1] == []  # its parts were removed


def test_a_transient_error_retries_from_the_checkpoint(user, monkeypatch, worker_like):
    add_rows(user, descriptions=[f"row {i}" for i in range(30)])
    clean = ExportJob.objects.create(user=user)
    generate_csv_export(clean.pk)
    clean.refresh_from_db()
    job = ExportJob.objects.create(user=user)
    calls = fail_on_call(monkeypatch, 3, OSError("storage timed out"), then="recover")

    assert generate_csv_export.apply((job.pk,)).get() == "completed"

    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED
    assert len(calls) == 1 + 8 + 1  # header, 8 batches, and the one batch that failed: nothing redone
    with job.file.open("rb") as mine, clean.file.open("rb") as reference:
        assert mine.read() == reference.read()
    assert not FailedTask.objects.exists()


def test_a_job_that_already_ended_gets_no_second_dead_letter(user):
    job = ExportJob.objects.create(user=user)
    assert ExportJob.mark_failed(job.pk, "RuntimeError: first")
    generate_csv_export.on_failure(RuntimeError("second"), "task-2", (job.pk,), {}, None)

    job.refresh_from_db()
    assert job.error == "RuntimeError: first"
    assert not FailedTask.objects.exists()  # the first failure's dead letter is the one


def test_failed_and_cancelled_jobs_are_not_run_or_resent(user):
    failed, cancelled = ExportJob.objects.create(user=user), ExportJob.objects.create(user=user)
    ExportJob.mark_failed(failed.pk, "RuntimeError: broken")
    ExportJob.cancel(cancelled.pk, user)
    long_ago = timezone.now() - timedelta(hours=1)
    ExportJob.objects.update(created_at=long_ago, lease_expires_at=long_ago)  # as stale as it gets

    assert export_watchdog() == []
    assert generate_csv_export(failed.pk) == "failed"
    assert generate_csv_export(cancelled.pk) == "cancelled"


def test_a_job_waiting_for_its_retry_is_left_to_the_retry(user):
    job = ExportJob.objects.create(user=user)
    ExportJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert ExportJob.claim(job.pk, "runner")

    ExportJob.release(job.pk, "runner", hold=timedelta(minutes=2))
    assert export_watchdog() == []  # not sent beside the retry
    assert ExportJob.claim(job.pk, "the-retry")  # which may claim it at once


def test_a_job_cancelled_under_a_runner_that_died_is_freed_by_the_watchdog(user):
    # Found by the chaos soak: the user cancels, the worker is killed before the
    # runner's next checkpoint, and the job kept the dead runner's lease and parts.
    job = ExportJob.objects.create(user=user)
    assert ExportJob.claim(job.pk, "dead-runner")
    default_storage.save(f"exports/{job.pk}/part-00000.csv", ContentFile(b"1,2\n"))
    assert ExportJob.cancel(job.pk, user)
    assert export_watchdog() == []  # the lease is still live: nothing to do yet
    assert ExportJob.objects.get(pk=job.pk).lease_owner == "dead-runner"

    ExportJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert export_watchdog() == []  # not sent again: it is cancelled
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.lease_expires_at) == (ExportJob.Status.CANCELLED, "", None)
    assert default_storage.listdir(f"exports/{job.pk}")[1] == []


def test_the_page_and_the_list_show_why_an_export_failed(user, client):
    job = ExportJob.objects.create(user=user)
    ExportJob.mark_failed(job.pk, "FileExistsError: <storage> said no")
    client.force_login(user)

    detail = client.get(reverse("exports:detail", args=[job.pk])).content.decode()
    assert "This export failed" in detail
    assert "FileExistsError: &lt;storage&gt; said no" in detail  # escaped: the reason is data
    assert 'id="cancel-export"' not in detail
    assert client.get(reverse("exports:progress", args=[job.pk])).json()["error"].startswith("FileExistsError")
    listing = client.get(reverse("exports:list")).content.decode()
    assert "Failed" in listing
    assert "FileExistsError: &lt;storage&gt; said no" in listing


# ------------------------------------------------------------------------------
# Cancelling
# ------------------------------------------------------------------------------
def test_a_cancel_stops_the_runner_at_its_next_checkpoint(user, monkeypatch, worker_like):
    add_rows(user, descriptions=[f"row {i}" for i in range(30)])
    job = ExportJob.objects.create(user=user)
    write_part, calls = ExportRunner._write_part, []

    def user_cancels_during_the_third_batch(runner, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the header, two batches, then the user clicks "Cancel"
            assert ExportJob.cancel(job.pk, user)
        return write_part(runner, *args, **kwargs)

    monkeypatch.setattr(ExportRunner, "_write_part", user_cancels_during_the_third_batch)
    assert generate_csv_export.apply((job.pk,)).get() == "cancelled"

    job.refresh_from_db()
    assert (job.status, job.processed_rows) == (ExportJob.Status.CANCELLED, 2 * 4)  # the third never checkpointed
    assert (job.lease_owner, job.file.name) == ("", "")
    assert len(calls) == 4  # stopped: no fourth batch
    assert default_storage.listdir(f"exports/{job.pk}")[1] == []
    assert not FailedTask.objects.exists()  # a cancel is not a failure


def test_the_owner_cancels_from_the_page(user, client):
    add_rows(user)
    job = ExportJob.objects.create(user=user)
    runner = ExportRunner(job.pk, should_stop=lambda: True)  # a runner that wrote its header part, then died
    assert ExportJob.claim(job.pk, runner.owner)
    with pytest.raises(StopRequested):
        runner.run()
    assert default_storage.listdir(f"exports/{job.pk}")[1]
    client.force_login(user)

    assert 'id="cancel-export"' in client.get(reverse("exports:detail", args=[job.pk])).content.decode()
    response = client.post(reverse("exports:cancel", args=[job.pk]), follow=True)

    job.refresh_from_db()
    assert job.status == ExportJob.Status.CANCELLED
    assert f"Export {job.pk} cancelled." in response.content.decode()
    assert default_storage.listdir(f"exports/{job.pk}")[1] == []  # no runner left to clean up: the view did


def test_cancel_is_a_post_for_the_owner_with_a_csrf_token(user):
    job = ExportJob.objects.create(user=user)
    url = reverse("exports:cancel", args=[job.pk])
    intruder = Client()
    intruder.force_login(get_user_model().objects.create_user("eve", "eve@example.com", "pw"))
    owner = Client(enforce_csrf_checks=True)
    owner.force_login(user)

    assert intruder.post(url).status_code == 404
    assert owner.get(url).status_code == 405
    assert owner.post(url).status_code == 403  # no CSRF token
    job.refresh_from_db()
    assert job.status == ExportJob.Status.PENDING


def test_cancelling_a_finished_export_is_refused(user, client):
    job = ExportJob.objects.create(user=user)
    generate_csv_export(job.pk)
    client.force_login(user)

    response = client.post(reverse("exports:cancel", args=[job.pk]), follow=True)

    job.refresh_from_db()
    assert job.status == ExportJob.Status.COMPLETED
    assert job.file
    assert f"Export {job.pk} is already completed: nothing to cancel." in response.content.decode()


# ------------------------------------------------------------------------------
# The per-user limit, and the same request twice
# ------------------------------------------------------------------------------
def test_the_same_export_requested_twice_is_the_same_job(user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        first, created = ExportJob.request(user, date_from=date(2026, 1, 1))
        again, created_again = ExportJob.request(user, date_from=date(2026, 1, 1))
    assert (created, created_again, again) == (True, False, first)
    assert len(callbacks) == 1  # dispatched once


def test_at_most_the_limit_of_exports_run_per_user(user, settings):
    other = get_user_model().objects.create_user("bob", "bob@example.com", "pw")
    ExportJob.request(user, date_from=date(2026, 1, 1))
    ExportJob.request(user, date_from=date(2026, 2, 1))

    with pytest.raises(TooManyExports, match="you already have 2 exports running"):
        ExportJob.request(user, date_from=date(2026, 3, 1))
    ExportJob.request(other)  # someone else's limit is their own
    ExportJob.objects.filter(user=user).update(status=ExportJob.Status.COMPLETED)
    assert ExportJob.request(user, date_from=date(2026, 3, 1))[1]  # finished exports do not count
    assert ExportJob.objects.filter(user=user, status__in=ExportJob.ACTIVE).count() == 1


def test_the_page_explains_the_limit_and_reuses_a_running_export(user, client):
    client.force_login(user)
    start = reverse("exports:start")
    first = client.post(start, {"date_from": "2026-01-01"})
    job = ExportJob.objects.get()

    again = client.post(start, {"date_from": "2026-01-01"}, follow=True)
    assert first.url == reverse("exports:detail", args=[job.pk])
    assert again.redirect_chain[-1][0] == first.url
    assert "already under way" in again.content.decode()

    client.post(start, {"date_to": "2026-06-30"})
    refused = client.post(start, {})
    assert refused.status_code == 429
    assert "Export not started: you already have 2 exports running" in refused.content.decode()
    assert ExportJob.objects.count() == 2


def test_bad_dates_are_refused_with_a_clear_error(user, client):
    client.force_login(user)
    response = client.post(reverse("exports:start"), {"date_from": "2026-02-01", "date_to": "2026-01-01"})
    assert response.status_code == 400
    assert "The first day must not be after the last day." in response.content.decode()
    assert client.post(reverse("exports:start"), {"date_from": "yesterday"}).status_code == 400
    assert not ExportJob.objects.exists()


def test_days_no_export_can_name_are_refused_before_any_job_or_dead_letter(user, client):
    """9999-12-31 once made a job whose task failed on the day after it (an OverflowError), each a dead letter."""
    client.force_login(user)
    page = client.get(reverse("exports:list")).content.decode()
    assert 'min="1900-01-01" max="2999-12-31"' in page  # the date picker's own bounds

    for fields in ({"date_to": "9999-12-31"}, {"date_from": "0001-01-01"}):
        response = client.post(reverse("exports:start"), fields)
        assert response.status_code == 400
        assert "Choose a day from 1900-01-01 to 2999-12-31." in response.content.decode()
    with pytest.raises(CommandError, match="export refused for 'ada': Choose a day from 1900-01-01 to 2999-12-31"):
        call_command("export_transactions", user="ada", date_to="9999-12-31")
    with pytest.raises(CommandError, match="export refused for 'ada': The first day must not be after the last"):
        call_command("export_transactions", user="ada", date_from="2026-02-01", date_to="2026-01-01")
    with pytest.raises(ValidationError):  # any other caller
        ExportJob.request(user, date_to=date.max)

    assert not ExportJob.objects.exists()
    assert not FailedTask.objects.exists()


def test_the_command_refuses_beyond_the_limit_and_reuses_a_running_export(user, capsys, settings):
    settings.EXPORT_MAX_RUNNING_PER_USER = 1
    call_command("export_transactions", user="ada", date_from="2026-01-01")
    call_command("export_transactions", user="ada", date_from="2026-01-01")
    first, second = capsys.readouterr().out.split()
    assert first == second

    with pytest.raises(CommandError, match="export refused for 'ada': you already have 1 export running"):
        call_command("export_transactions", user="ada")
    with pytest.raises(CommandError, match="not a date"):
        call_command("export_transactions", user="ada", date_from="01/02/2026")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need Postgres")
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_of_one_user_never_pass_the_limit(user, monkeypatch):
    """Eight requests at once, each for a different range: the row lock lets exactly two through."""
    # Keep the exports queued: run eagerly here, they would finish (and free the limit) at once.
    monkeypatch.setattr(relay, "publish_after_commit", lambda message_id: None)
    barrier, outcomes = threading.Barrier(8), []

    def request(day: int):
        try:
            barrier.wait()
            outcomes.append(ExportJob.request(user, date_from=date(2026, 1, day))[1])
        except TooManyExports:
            outcomes.append("refused")
        finally:
            close_old_connections()

    threads = [threading.Thread(target=request, args=(day,)) for day in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(map(str, outcomes)) == ["True", "True", *["refused"] * 6]
    assert ExportJob.objects.filter(user=user, status__in=ExportJob.ACTIVE).count() == 2


# ------------------------------------------------------------------------------
# The parameters: a range of days
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("use_copy", [True, False] if connection.vendor == "postgresql" else [False])
def test_a_date_range_exports_only_those_days(user, use_copy, settings):
    add_rows(user, descriptions=[f"row {i}" for i in range(10)])
    today = timezone.localdate()
    Transaction.objects.filter(description__in=["row 0", "row 1"]).update(
        created_at=timezone.now() - timedelta(days=10)
    )
    Transaction.objects.filter(description="row 9").update(created_at=timezone.now() + timedelta(days=10))
    job = ExportJob.objects.create(user=user, date_from=today - timedelta(days=2), date_to=today + timedelta(days=1))

    runner = ExportRunner(job.pk, use_copy=use_copy)
    assert ExportJob.claim(job.pk, runner.owner)
    job = runner.run()

    with job.file.open("rb") as handle:
        rows = rows_of(handle.read())[1:]
    assert [row[4] for row in rows] == [f"row {i}" for i in range(2, 9)]
    assert job.total_rows == job.processed_rows == 7
