"""The cron alternative for real: scripts/cron/run-scheduled, started as cron starts it.

cron runs a job with PATH=/usr/bin:/bin, HOME, SHELL and the crontab's own
variables, and nothing else: these tests start the wrapper with exactly that.
The lock is proven with two real runs: the first is held up inside manage.py by a
table lock this test takes, and the second must give up at once without running.
"""

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection, transaction
from django.utils import timezone

from .conftest import ROOT, _test_database_url, wait_for

WRAPPER = ROOT / "scripts" / "cron" / "run-scheduled"
CRONTAB = ROOT / "scripts" / "cron" / "crontab.example"
SKIPPED = 75  # EX_TEMPFAIL


@pytest.fixture
def cron_env(transactional_db, tmp_path):
    """What cron gives a job: a bare PATH, HOME, SHELL, and the crontab's variables."""
    if connection.vendor != "postgresql":
        pytest.skip("the wrapper runs manage.py against the test database: needs Postgres")
    env_file = tmp_path / "cron.env"
    env_file.write_text(
        "\n".join(
            [
                "DJANGO_SETTINGS_MODULE=config.settings.test",
                f"DATABASE_URL={_test_database_url()}",
                f"REDIS_URL={settings.REDIS_URL}",
                f"CELERY_BROKER_URL={settings.CELERY_BROKER_URL}",
                f"TEST_REDIS_DB={settings.TEST_REDIS_DB}",
            ]
        )
        + "\n"
    )
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SHELL": "/bin/sh",
        "CRON_ENV_FILE": str(env_file),
        "VIRTUAL_ENV": sys.prefix,  # this test run's virtualenv
        "CRON_LOCK_DIR": str(tmp_path),
    }


def expired_session() -> str:
    store = SessionStore()
    store.create()
    Session.objects.filter(session_key=store.session_key).update(expire_date=timezone.now() - timedelta(days=1))
    return store.session_key


def run_wrapper(env, *args, **popen) -> subprocess.Popen:
    # From cron's working directory (HOME), not the project root.
    return subprocess.Popen(
        [str(WRAPPER), *args], cwd=env["HOME"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_wrapper_runs_an_entry_from_crons_empty_environment(cron_env):
    key = expired_session()

    process = run_wrapper(cron_env, "expired-session-cleanup")
    out, err = process.communicate(timeout=120)

    assert process.returncode == 0, err
    assert "expired-session-cleanup: acted on 1" in out
    assert not Session.objects.filter(session_key=key).exists()


def test_without_settings_the_wrapper_refuses_to_guess(cron_env, tmp_path):
    (tmp_path / "empty.env").write_text("")
    process = run_wrapper(cron_env | {"CRON_ENV_FILE": str(tmp_path / "empty.env")}, "expired-session-cleanup")
    _, err = process.communicate(timeout=60)

    assert process.returncode != 0
    assert "DJANGO_SETTINGS_MODULE" in err


def waiting_for_a_lock(table: str) -> bool:
    with connection.cursor() as cursor:
        # Inside a transaction Postgres shows the activity of its first look, unless told to look again.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            [f"%{table}%"],
        )
        return cursor.fetchone()[0] > 0


def test_a_second_run_is_skipped_while_the_first_still_runs(cron_env):
    key = expired_session()

    with transaction.atomic():
        # Hold the first run up inside its first query of the session table.
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {Session._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        first = run_wrapper(cron_env, "expired-session-cleanup")
        wait_for(lambda: waiting_for_a_lock(Session._meta.db_table), 60, "the first run to reach the table")

        started = time.monotonic()
        second = run_wrapper(cron_env, "expired-session-cleanup")
        _, err = second.communicate(timeout=30)

        assert second.returncode == SKIPPED
        assert "expired-session-cleanup: skipped, the previous run still holds" in err
        assert time.monotonic() - started < 5  # gave up at once: never started Django
        assert first.poll() is None  # the first one is still running
    # The table lock is gone: the first run finishes its work.
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert "acted on 1" in out
    assert not Session.objects.filter(session_key=key).exists()

    # And the lock went with it: the next run is not skipped.
    third = run_wrapper(cron_env, "expired-session-cleanup")
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert "acted on 0" in out


def cron_fields(schedule) -> str:
    """A Celery crontab as the first five fields of a crontab line."""
    return " ".join(
        str(field)
        for field in (
            schedule._orig_minute,
            schedule._orig_hour,
            schedule._orig_day_of_month,
            schedule._orig_month_of_year,
            schedule._orig_day_of_week,
        )
    )


def test_the_example_crontab_runs_every_beat_entry_on_its_schedule():
    lines = [line.split() for line in CRONTAB.read_text().splitlines() if line and line[0] in "0123456789*"]
    crontab = {fields[-1]: " ".join(fields[:5]) for fields in lines}
    assert all(Path(fields[5]).name == "run-scheduled" for fields in lines)
    assert crontab == {name: cron_fields(entry["schedule"]) for name, entry in settings.CELERY_BEAT_SCHEDULE.items()}
