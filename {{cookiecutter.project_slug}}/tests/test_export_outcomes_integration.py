"""Exports that fail, are cancelled, or are asked for too often, on the real pools and a live web server.

- A poison export (storage refuses every part) ends FAILED with one dead letter,
  and the watchdog leaves it alone instead of re-sending it every minute.
- A cancel mid-export stops the worker at its next batch.
- A burst of concurrent requests by one user, over HTTP, starts at most
  EXPORT_MAX_RUNNING_PER_USER exports.
"""

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import export_watchdog, generate_csv_export

from .conftest import wait_for
from .test_exports_integration import ROWS

pytestmark = pytest.mark.integration


def reload(job: ExportJob) -> ExportJob:
    job.refresh_from_db()
    return job


def part_files(media_root: Path, job: ExportJob) -> list[str]:
    directory = media_root / "exports" / str(job.pk)
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []


def test_a_poison_export_fails_once_and_the_watchdog_leaves_it_alone(live_celery, demo):
    job = ExportJob.objects.create(user=demo)
    # The poison: a file where the job's part directory must go. Storage refuses
    # every part of this job, on every attempt, as a broken volume would.
    (live_celery.media_root / "exports").mkdir(exist_ok=True)
    (live_celery.media_root / "exports" / str(job.pk)).write_text("not a directory")
    generate_csv_export.delay(job.pk)

    job = wait_for(lambda: reload(job).status == ExportJob.Status.FAILED and job, message="the export to fail")
    assert job.error.startswith("FileExistsError: ")
    assert (job.lease_owner, job.lease_expires_at) == ("", None)
    failed = wait_for(FailedTask.objects.first, message="the dead letter")  # one, after the last retry
    assert (failed.args, failed.retries) == ([job.pk], settings.TASK_RETRY_POLICY["max_retries"])

    # Long past any lease: before the fix, the watchdog re-sent such a job every
    # minute, and each run wrote another dead letter.
    ExportJob.objects.filter(pk=job.pk).update(created_at=job.created_at.replace(year=job.created_at.year - 1))
    assert export_watchdog.delay().get(timeout=60) == []  # nothing dispatched
    time.sleep(2)  # time for a stray run to fail again, if one had been sent
    assert FailedTask.objects.count() == 1
    assert reload(job).status == ExportJob.Status.FAILED


def test_a_cancel_mid_export_stops_the_worker_at_the_next_batch(live_celery, demo):
    client = Client()
    client.force_login(demo)
    job = ExportJob.objects.create(user=demo)
    task = generate_csv_export.delay(job.pk)
    wait_for(lambda: reload(job).processed_rows >= ROWS // 5, message="20% of the export")

    response = client.post(reverse("exports:cancel", args=[job.pk]))  # the page's Cancel button
    assert response.status_code == 302

    assert task.get(timeout=30) == "cancelled"  # the worker stopped, by itself
    job = reload(job)
    stopped_at = job.processed_rows
    assert job.status == ExportJob.Status.CANCELLED
    assert job.lease_owner == ""  # released
    assert ROWS // 5 <= stopped_at < ROWS
    time.sleep(1.5)  # several batches' worth on the throttled pool
    assert reload(job).processed_rows == stopped_at  # nothing written after the stop
    assert part_files(live_celery.media_root, job) == []  # partial parts removed
    assert not job.file
    assert not FailedTask.objects.exists()  # a cancel is not a dead letter


def test_concurrent_requests_over_http_start_at_most_the_limit(live_celery, live_server, demo):
    limit = settings.EXPORT_MAX_RUNNING_PER_USER
    burst = limit + 6
    client = Client()
    client.force_login(demo)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value

    cookies = f"{settings.SESSION_COOKIE_NAME}={session}"
    # Load the page once, as a browser would, for the CSRF cookie its form needs.
    page_request = urllib.request.Request(f"{live_server.url}/exports/", headers={"Cookie": cookies})  # noqa: S310
    with urllib.request.urlopen(page_request, timeout=10) as page:  # noqa: S310 (a localhost URL built by the test)
        jar = SimpleCookie()
        for header in page.headers.get_all("Set-Cookie"):
            jar.load(header)
    token = jar[settings.CSRF_COOKIE_NAME].value
    headers = {"Cookie": f"{cookies}; {settings.CSRF_COOKIE_NAME}={token}", "X-CSRFToken": token}
    http = urllib.request.build_opener(NoRedirect)
    barrier, statuses = threading.Barrier(burst), []

    def post(index: int):
        # A different range each: no request is a repeat of another, only the limit refuses.
        body = urllib.parse.urlencode({"date_from": f"2020-01-{index + 1:02d}"}).encode()
        barrier.wait()
        try:
            start = urllib.request.Request(f"{live_server.url}/exports/start/", data=body, headers=headers)  # noqa: S310
            statuses.append(http.open(start, timeout=30).status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)

    threads = [threading.Thread(target=post, args=(index,)) for index in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    try:
        assert sorted(statuses) == [302] * limit + [429] * (burst - limit)
        assert ExportJob.objects.filter(user=demo).count() == limit
    finally:
        for job in ExportJob.objects.filter(user=demo):  # free the export pool for the next test
            ExportJob.cancel(job.pk, demo)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect (the new export's page) instead of following it."""

    def redirect_request(self, *args, **kwargs):
        return None
