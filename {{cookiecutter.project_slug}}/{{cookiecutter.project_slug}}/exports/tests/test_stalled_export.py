"""A running export whose runner died: "stalled — resuming", no ETA, still cancellable."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from ..models import ExportJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def running(user, lease_seconds: float, **fields) -> ExportJob:
    """A RUNNING job, 2,000 of 5,000 rows done, whose lease expires ``lease_seconds`` from now (negative: expired)."""
    now = timezone.now()
    defaults = {"status": ExportJob.Status.RUNNING, "processed_rows": 2000, "total_rows": 5000}
    return ExportJob.objects.create(
        user=user,
        started_at=now - timedelta(minutes=2),
        lease_owner="runner",
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        **defaults | fields,
    )


# --8<-- [start:stalled-tests]
def test_a_running_export_with_a_live_lease_is_not_stalled(user):
    assert not running(user, lease_seconds=30).is_stalled


def test_a_running_export_whose_lease_expired_is_stalled(user):
    assert running(user, lease_seconds=-1).is_stalled


def test_a_running_export_handed_back_without_a_lease_is_stalled(user):
    job = running(user, lease_seconds=30)
    ExportJob.release(job.pk, "runner")  # shutdown: lease freed, the message goes back to the queue
    job.refresh_from_db()
    assert job.is_stalled


def test_a_running_export_waiting_for_its_retry_is_not_stalled(user):
    job = running(user, lease_seconds=30)
    ExportJob.release(job.pk, "runner", hold=timedelta(minutes=2))  # a retry is on its way
    job.refresh_from_db()
    assert not job.is_stalled


@pytest.mark.parametrize("status", ["pending", "completed", "failed", "cancelled"])
def test_only_running_exports_stall(user, status):
    assert not running(user, lease_seconds=-60, status=status).is_stalled
    # --8<-- [end:stalled-tests]


def test_progress_of_a_stalled_export_says_so_and_has_no_eta(user, client):
    client.force_login(user)
    live, stalled = running(user, lease_seconds=30), running(user, lease_seconds=-1)

    live_progress = client.get(reverse("exports:progress", args=[live.pk])).json()
    stalled_progress = client.get(reverse("exports:progress", args=[stalled.pk])).json()

    assert (live_progress["stalled"], live_progress["status"]) == (False, "running")
    assert live_progress["eta_seconds"] > 0
    assert (stalled_progress["stalled"], stalled_progress["status"]) == (True, "running")
    assert stalled_progress["eta_seconds"] is None  # not a number that keeps growing
    assert stalled_progress["percent"] == 40.0  # where it stopped


def test_the_pages_show_a_stalled_export_and_its_cancel_button(user, client):
    client.force_login(user)
    job = running(user, lease_seconds=-1)

    detail = client.get(reverse("exports:detail", args=[job.pk])).content.decode()
    listing = client.get(reverse("exports:list")).content.decode()

    assert '<strong id="status">Stalled — resuming</strong>' in detail
    assert 'id="stalled" hidden' not in detail
    assert 'id="cancel-export"' in detail
    assert 'class="badge stalled status">Stalled — resuming<' in listing
    assert reverse("exports:cancel", args=[job.pk]) in listing


def test_a_healthy_running_export_is_not_called_stalled(user, client):
    client.force_login(user)
    job = running(user, lease_seconds=30)

    detail = client.get(reverse("exports:detail", args=[job.pk])).content.decode()

    assert '<strong id="status">Running</strong>' in detail
    assert 'id="stalled" hidden' in detail
