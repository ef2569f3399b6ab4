from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from ... import outbox
from ..models import PasswordResetRequest
from ..tasks import CLAIM_LEASE, MAX_RESENDS, resend_lost_password_resets, send_password_reset_email


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "old-password")


def test_task_emails_a_working_reset_link(user, client):
    assert send_password_reset_email(user.pk) == "sent"

    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/accounts/reset/" in line)
    response = client.get(link.removeprefix("http://localhost:8000"), follow=True)
    assert response.status_code == 200
    assert response.context["validlink"] is True


def test_one_request_sends_one_email_however_often_it_runs(user):
    request = PasswordResetRequest.objects.create(user=user)

    results = [send_password_reset_email(user.pk, request.pk) for _ in range(3)]

    assert results == ["sent", "already-sent", "already-sent"]
    assert len(mail.outbox) == 1
    request.refresh_from_db()
    assert request.sent_at is not None


def test_smtp_failure_releases_the_claim_for_the_retry(user, monkeypatch, eager_retries):
    request = PasswordResetRequest.objects.create(user=user)
    calls = []

    def flaky_send(user):
        calls.append(user.pk)
        if len(calls) == 1:
            raise ConnectionRefusedError("smtp down")
        mail.send_mail("subject", "body", None, [user.email])

    monkeypatch.setattr("{{ cookiecutter.project_slug }}.users.tasks._send", flaky_send)

    assert send_password_reset_email.apply((user.pk, request.pk), throw=False).get() == "sent"  # retried eagerly
    assert len(calls) == 2
    assert len(mail.outbox) == 1


def test_missing_user_is_logged_and_not_retried(db, caplog):
    assert send_password_reset_email(987654) == "skipped"
    assert mail.outbox == []
    assert "no active user 987654" in caplog.text


def test_reset_view_dispatches_only_after_commit(user, client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("password_reset"), {"email": "ada@example.com"})
        assert response.status_code == 302
        assert mail.outbox == []  # nothing is sent inside the request's transaction

    assert len(callbacks) == 1
    callbacks[0]()  # the commit happens: the task is sent (and runs eagerly in tests)
    assert len(mail.outbox) == 1
    assert PasswordResetRequest.objects.get().sent_at is not None


# --- Requests whose message was lost (a worker killed while it held it) ----------
def lost_request(user, age_seconds: int, **fields) -> PasswordResetRequest:
    request = PasswordResetRequest.objects.create(user=user, **fields)
    created = timezone.now() - timedelta(seconds=age_seconds)
    PasswordResetRequest.objects.filter(pk=request.pk).update(created_at=created)
    return request


def test_a_lost_request_is_sent_again_once(user, django_capture_on_commit_callbacks):
    lost = lost_request(user, 90)
    lost_request(user, 10)  # its message is probably still on its way
    lost_request(user, 3600)  # too old: a link this late helps nobody
    lost_request(user, 90, sent_at=timezone.now())
    lost_request(user, 90, claimed_at=timezone.now())  # a worker is sending it right now

    with django_capture_on_commit_callbacks(execute=True):
        assert resend_lost_password_resets() == [lost.pk]
    assert len(mail.outbox) == 1
    lost.refresh_from_db()
    assert lost.sent_at is not None
    assert lost.resends == 1

    with django_capture_on_commit_callbacks(execute=True):
        assert resend_lost_password_resets() == []  # sent now: never again
    assert len(mail.outbox) == 1


def test_an_expired_claim_counts_as_lost_and_resends_are_bounded(user, monkeypatch):
    stale_claim = timezone.now() - CLAIM_LEASE - timedelta(seconds=1)
    lost = lost_request(user, 300, claimed_at=stale_claim)
    sent = []
    monkeypatch.setattr(outbox, "send", lambda task, *args: sent.append(args))

    for _ in range(MAX_RESENDS + 2):  # the message is lost every time
        resend_lost_password_resets()

    assert sent == [(user.pk, lost.pk)] * MAX_RESENDS
    assert resend_lost_password_resets(dry_run=True) == []
