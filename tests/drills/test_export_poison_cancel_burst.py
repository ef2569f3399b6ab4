"""Drill: a poison export, a cancel mid-export, and one user asking for exports in a burst.

- An export that fails on every attempt (its storage refuses every part) must
  end FAILED with its reason and exactly one dead letter, and the watchdog must
  leave it alone: before, it re-sent such a job every minute, forever, and each
  run wrote another dead letter.
- An export cancelled from its page stops at the next batch: CANCELLED, lease
  released, part files gone, no dead letter.
- A burst of concurrent ``export_transactions`` processes for one user starts
  ``EXPORT_MAX_RUNNING_PER_USER`` exports, no more (the rest are refused with a
  clear error), and repeats of an export under way get that export back.
"""

import signal
import subprocess
import time

import pytest

from .conftest import TRANSACTIONS, wait_for

pytestmark = pytest.mark.drill

LIMIT = 2  # EXPORT_MAX_RUNNING_PER_USER's default


def exports_command(project, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["python", "manage.py", "export_transactions", "--user", "demo", *args],
        cwd=project.path,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def own_dead_letters(project):
    """Remove the dead letters this drill causes afterwards: the other drills assert there are none."""
    before = project.scalar("SELECT coalesce(max(id), 0) FROM core_failedtask")
    yield
    project.sql("DELETE FROM core_failedtask WHERE id > %s RETURNING id", [before])


def test_poison_export_cancel_and_a_burst_of_requests(project, pools, own_dead_letters):
    # 1. The poison export: retried (storage errors may be transient), then failed for good.
    poison = project.driver("export", "--poison")["job"]
    wait_for(lambda: project.export(poison)["status"] == "failed", 60, "the poison export to fail")
    wait_for(lambda: project.scalar("SELECT count(*) FROM core_failedtask"), 30, "its dead letter")

    # 2. A healthy export, cancelled from its page part-way through.
    job = project.driver("export")["job"]
    wait_for(lambda: project.export_progress(job) >= 0.2, message="20% of the export")
    assert project.driver("cancel", job) == {"cancelled": {str(job): 302}}
    wait_for(lambda: project.export(job)["lease_owner"] == "", 30, "the runner to stop and release its lease")
    stopped_at = project.export(job)["processed_rows"]

    # 3. What beat does every minute, with both jobs long past any lease.
    query = "UPDATE exports_exportjob SET created_at = now() - interval '1 hour' WHERE id = ANY(%s) RETURNING id"
    assert len(project.sql(query, [[poison, job]])) == 2
    assert project.driver("watchdog") == {"redispatched": []}
    time.sleep(1.5)  # several throttled batches: the cancelled runner would have moved on

    state = project.driver("state")
    failed, cancelled = state["exports"][str(poison)], state["exports"][str(job)]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("FileExistsError: ")
    assert [dead["args"] for dead in state["failed_tasks"]] == [[poison]]  # one dead letter, none for the cancel
    assert cancelled["status"] == "cancelled"
    assert cancelled["processed_rows"] == stopped_at
    assert 0.2 <= stopped_at / TRANSACTIONS < 1
    assert cancelled["part_files"] == []
    assert cancelled["file"] is None

    # 4. One user, eight concurrent requests: five ranges, and the first range
    # asked for four times. The export pool is stopped first, so no export
    # can finish (and free a place) while the burst is on.
    pools.signal("worker-export", signal.SIGTERM)
    days = [1, 2, 3, 4, 5, 1, 1, 1]
    burst = [(day, exports_command(project, "--from", f"2020-01-{day:02d}")) for day in days]
    outcomes = [(day, *finish(process)) for day, process in burst]
    started = {day: int(out) for day, code, out, _ in outcomes if code == 0}
    try:
        assert len(started) == LIMIT  # ranges that got an export
        for day, code, out, err in outcomes:
            if code == 0:
                assert int(out) == started[day]  # a repeat gets the export under way
            else:
                assert f"export refused for 'demo': you already have {LIMIT} exports running" in err
                assert day not in started
        active = project.sql("SELECT id FROM exports_exportjob WHERE status IN ('pending', 'running') ORDER BY id")
        assert sorted(started.values()) == [job_id for (job_id,) in active]
    finally:
        # Leave the export pool as the next drill expects it: idle and up.
        if started:
            project.driver("cancel", *started.values())
        pools.restart("worker-export")


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err
