import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from config.celery_app import app

from ... import outbox
from .. import tasks
from ..models import PasswordResetRequest
from ..tasks import (
    CLAIM_LEASE,
    MAX_RESENDS,
    prune_password_resets,
    resend_lost_password_resets,
    send_password_reset_email,
)

ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"


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


def test_a_lost_request_made_by_address_is_sent_again_by_address(user, django_capture_on_commit_callbacks):
    lost = lost_request(None, 90, email="ada@example.com")

    with django_capture_on_commit_callbacks(execute=True):
        assert resend_lost_password_resets() == [lost.pk]

    assert [message.to for message in mail.outbox] == [["ada@example.com"]]


# --- The form: the same answer and the same work for every address ---------------
def request_reset(client, email, address=ATTACKER):
    return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=address)


def statements(queries, email: str) -> list[str]:
    """The SQL a request ran, with the address, every literal (ids, times, uuids) and savepoint name blanked out."""
    return [re.sub(r"'[^']*'|\b\d+\b|\"s\d+_x\d+\"", "?", query["sql"].replace(email, "<email>")) for query in queries]


# --8<-- [start:same-work-test]
def test_known_and_unknown_addresses_cost_the_request_the_same_work(user, client, django_capture_on_commit_callbacks):
    work = {}
    for email in ("ada@example.com", "nobody@example.com"):
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks() as callbacks:
            response = request_reset(client, email)
        work[email] = (response.status_code, response["Location"], statements(queries, email), len(callbacks))

    assert work["ada@example.com"] == work["nobody@example.com"]
    _, _, sql, published = work["ada@example.com"]
    assert published == 1  # one outbox message, published after COMMIT, either way
    assert not any("users_user" in statement for statement in sql)  # accounts are the task's business
    # --8<-- [end:same-work-test]


def test_the_task_emails_a_known_address_and_nobody_for_another(user, client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        request_reset(client, "ADA@example.com")  # case-insensitive, as Django's own form
        request_reset(client, "nobody@example.com")

    assert [message.to for message in mail.outbox] == [["ada@example.com"]]
    known, unknown = PasswordResetRequest.objects.order_by("pk")
    assert (known.user, known.sent_at is not None) == (user, True)
    # Done with: nothing was sent, and nothing will be sent again.
    assert (unknown.user, unknown.sent_at is not None) == (None, True)
    assert resend_lost_password_resets(dry_run=True) == []


# --8<-- [start:flood-test]
def test_a_flood_for_one_address_sends_a_few_emails_and_every_answer_is_the_same(
    user, client, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        answers = [request_reset(client, "ada@example.com", address=f"198.51.100.{n}") for n in range(16)]

    assert {(answer.status_code, answer["Location"]) for answer in answers} == {(302, reverse("password_reset_done"))}
    assert len(mail.outbox) == settings.PASSWORD_RESETS_PER_ADDRESS
    assert PasswordResetRequest.objects.count() == settings.PASSWORD_RESETS_PER_ADDRESS
    # --8<-- [end:flood-test]


def test_one_client_asking_for_many_addresses_is_limited(db, client, settings):
    for n in range(settings.PASSWORD_RESETS_PER_CLIENT + 5):
        assert request_reset(client, f"someone{n}@example.com").status_code == 302

    assert PasswordResetRequest.objects.count() == settings.PASSWORD_RESETS_PER_CLIENT
    request_reset(client, "someone0@example.com", address=OWNER)  # another client: heard
    assert PasswordResetRequest.objects.count() == settings.PASSWORD_RESETS_PER_CLIENT + 1


# --- Pruning --------------------------------------------------------------------
def test_cleanup_deletes_requests_past_their_retention(user, settings, monkeypatch, capsys):
    retention = settings.PASSWORD_RESET_RETENTION_DAYS * 24 * 3600
    for _ in range(3):
        lost_request(user, retention + 60, sent_at=timezone.now())
    lost_request(None, retention + 60, email="nobody@example.com")
    recent = lost_request(user, retention - 60, sent_at=timezone.now())
    monkeypatch.setattr(tasks, "PRUNE_BATCH_SIZE", 2)  # several batches

    call_command("scheduled", "run", "password-reset-cleanup", "--dry-run")
    assert "would act on 4" in capsys.readouterr().out
    call_command("scheduled", "run", "password-reset-cleanup")
    assert "acted on 4" in capsys.readouterr().out

    assert list(PasswordResetRequest.objects.values_list("pk", flat=True)) == [recent.pk]


def test_cleanup_runs_nightly_on_the_low_queue(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["password-reset-cleanup"]
    assert entry["task"] == prune_password_resets.name
    assert entry["options"]["queue"] == "low"
    assert app.amqp.router.route({}, prune_password_resets.name)["queue"].name == "low"
