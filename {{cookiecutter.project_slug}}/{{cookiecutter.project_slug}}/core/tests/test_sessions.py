"""Session cleanup on beat: Django's clearsessions as a scheduled task on the low queue."""

from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.utils import timezone

from config.celery_app import app

from ..tasks import clear_expired_sessions

ENTRY = "expired-session-cleanup"


def make_session(expires_in: timedelta) -> str:
    """A database session, as a login would create it, expiring ``expires_in`` from now."""
    store = SessionStore()
    store["user"] = "ada"
    store.create()
    Session.objects.filter(session_key=store.session_key).update(expire_date=timezone.now() + expires_in)
    return store.session_key


@pytest.fixture
def sessions(db):
    expired = [make_session(timedelta(days=-1)), make_session(timedelta(seconds=-1))]
    live = make_session(timedelta(days=14))
    return expired, live


def test_cleanup_deletes_expired_sessions_and_keeps_live_ones(sessions, capsys):
    _, live = sessions

    call_command("scheduled", "run", ENTRY)

    assert "acted on 2" in capsys.readouterr().out
    assert list(Session.objects.values_list("session_key", flat=True)) == [live]
    assert SessionStore(session_key=live).load() == {"user": "ada"}  # still logged in


def test_cleanup_dry_run_counts_and_deletes_nothing(sessions, capsys):
    call_command("scheduled", "run", ENTRY, "--dry-run")

    assert "would act on 2" in capsys.readouterr().out
    assert Session.objects.count() == 3


def test_cleanup_runs_nightly_on_the_low_queue(settings):
    entry = settings.CELERY_BEAT_SCHEDULE[ENTRY]
    assert entry["task"] == clear_expired_sessions.name
    assert entry["options"]["queue"] == "low"
    assert entry["options"]["expire_seconds"] < 24 * 3600
    # The route agrees with the entry: sent by hand (or replayed), it is low-priority work too.
    assert app.amqp.router.route({}, clear_expired_sessions.name)["queue"].name == "low"
