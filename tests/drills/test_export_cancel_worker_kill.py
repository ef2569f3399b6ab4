"""Drill: an export is cancelled, and its pool is killed before the runner notices.

Found by the chaos soak's 30-minute run. A cancel is one UPDATE (and the view
deletes the parts); the runner sees it at its next checkpoint and frees its lease.
A worker killed in between (the OOM killer, a node lost) left a CANCELLED job
holding the dead runner's lease for ever: the watchdog only sends unfinished jobs
again. Now the watchdog also frees ended jobs whose lease expired, and deletes any
part written after the cancel.

Staged with SIGSTOP: the pool is frozen mid-export so that the runner cannot reach
its checkpoint, the owner cancels from the export page, and the pool is killed.
"""

import os
import signal

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.drill


def test_export_cancelled_under_a_runner_that_died_frees_its_lease_and_parts(project, pools):
    job = project.driver("export")["job"]
    wait_for(lambda: project.export_progress(job) >= 0.2, message="20% of the export")

    os.killpg(pools.processes["worker-export"].pid, signal.SIGSTOP)
    assert project.driver("cancel", job)["cancelled"] == {str(job): 302}
    pools.signal("worker-export", signal.SIGKILL, whole_group=True)
    pools.restart("worker-export")
    before = project.driver("state")["exports"][str(job)]
    assert before["status"] == "cancelled"
    assert before["lease_owner"], "the runner must have died before it noticed the cancel"
    assert before["parts"], f"the drill must cancel an export that has checkpoints: {before}"

    # What beat does every minute. The lease (3 s in the drills' settings) expires,
    # and the watchdog frees it and the parts, without sending the job again.
    def freed() -> bool:
        assert project.driver("watchdog")["redispatched"] == []
        return project.export(job)["lease_owner"] == ""

    wait_for(freed, 30, "the watchdog to free the dead runner's lease")
    after = project.driver("state")["exports"][str(job)]
    assert (after["status"], after["file"], after["part_files"]) == ("cancelled", None, [])
