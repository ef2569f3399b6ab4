"""Drills: the export pool dies (SIGKILL of its whole process group) or is stopped (SIGTERM) mid-export.

Either way the export must finish byte-identical to a plain COPY of the same
rows, resumed from its last checkpoint: the parts committed before the
interruption are kept, not written again from row 0.
"""

import re
import signal

import pytest

from .conftest import TRANSACTIONS, part_owners, wait_for

pytestmark = pytest.mark.drill


def assert_resumed_byte_identical(project, job: int, before: dict) -> None:
    state = project.driver("state")["exports"][str(job)]
    with open(state["file"], "rb") as handle:
        assert handle.read() == project.reference
    assert state["processed_rows"] == TRANSACTIONS
    # The checkpoints committed before the interruption are the start of the
    # final list: kept and concatenated, not redone.
    assert before["parts"], "the drill must interrupt an export that has checkpoints"
    assert state["parts"][: len(before["parts"])] == before["parts"]
    # Two runners: the one interrupted, and the one that resumed.
    assert part_owners(state["parts"]) == [*part_owners(before["parts"]), part_owners(state["parts"])[-1]]
    assert len(part_owners(state["parts"])) == 2


def test_export_pool_sigkilled_mid_export_resumes_from_its_checkpoint(project, pools):
    job = project.driver("export")["job"]
    wait_for(lambda: project.export_progress(job) >= 0.4, message="40% of the export")

    # The OOM killer, or a host dying: no handler runs, the lease stays taken
    # until it expires, and Redis keeps the message for the visibility timeout.
    pools.signal("worker-export", signal.SIGKILL, whole_group=True)
    before = project.export(job)
    assert 0.4 <= before["processed_rows"] / TRANSACTIONS < 1
    assert before["lease_owner"]  # nobody released it
    pools.restart("worker-export")

    def resumed() -> bool:
        if project.export(job)["processed_rows"] > before["processed_rows"]:
            return True
        # What beat does every minute: re-dispatch exports whose lease expired.
        # A duplicate dispatch is harmless: only one runner gets the lease.
        project.driver("watchdog")
        return False

    wait_for(resumed, 60, "the watchdog to resume the export")
    wait_for(lambda: project.export_completed(job), 90, "the resumed export to complete")
    assert_resumed_byte_identical(project, job, before)


def test_export_pool_sigtermed_mid_export_hands_the_job_back_at_once(project, pools):
    dispatched = project.driver("export")
    job, task = dispatched["job"], dispatched["task"]
    wait_for(lambda: project.export_progress(job) >= 0.4, message="40% of the export")

    # A deploy: SIGTERM to the pool's main process. Soft shutdown: the pool waits
    # 5 s, cancels the export, whose handler releases the lease, and the message
    # goes back to the queue.
    pools.signal("worker-export", signal.SIGTERM)
    before = project.export(job)
    assert before["status"] == "running"
    assert before["lease_owner"] == ""  # handed back, not left to expire
    pools.restart("worker-export")

    wait_for(lambda: project.export_completed(job), 90, "the resumed export to complete")
    assert_resumed_byte_identical(project, job, before)
    # Resumed by the very message that was handed back, not by the watchdog.
    finished = re.findall(
        rf"generate_csv_export\[{task}\] succeeded in [\d.]+s: 'completed'", pools.log("worker-export")
    )
    assert len(finished) == 1
