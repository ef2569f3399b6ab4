from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse

from ..tasks import send_password_reset_email


def test_task_emails_a_working_reset_link(db, client):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "old-password")

    assert send_password_reset_email(user.pk) == "sent"

    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/accounts/reset/" in line)
    response = client.get(link.removeprefix("http://localhost:8000"), follow=True)
    assert response.status_code == 200
    assert response.context["validlink"] is True


def test_missing_user_is_logged_and_not_retried(db, caplog):
    assert send_password_reset_email(987654) == "skipped"
    assert mail.outbox == []
    assert "no active user 987654" in caplog.text


def test_reset_view_dispatches_only_after_commit(db, client, django_capture_on_commit_callbacks):
    get_user_model().objects.create_user("ada", "ada@example.com", "pw")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("password_reset"), {"email": "ada@example.com"})
        assert response.status_code == 302
        assert mail.outbox == []  # nothing is sent inside the request's transaction

    assert len(callbacks) == 1
    callbacks[0]()  # the commit happens: the task is sent (and runs eagerly in tests)
    assert len(mail.outbox) == 1
