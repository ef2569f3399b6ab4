"""Drill: beat is stopped (SIGTERM), then killed (SIGKILL) right after a tick, and restarted each time.

A restarted beat must not send a tick that its previous life already sent: no
schedule entry goes out twice in the same minute. And the schedule goes on: the
restarted beat sends the next tick.

Beat logs one line per message it sends ("Scheduler: Sending due task <entry>"),
with the time; that log, appended to by every life of beat, is the record of
what was dispatched. (Runs last: by then beat has been up for a while and has
written its schedule to the database at least once, as in production.)
"""

import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.drill

SENT = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d):\d\d,\d+ \w+ celery\.beat \d+ Scheduler: Sending due task (\S+)", re.MULTILINE
)
EVERY_MINUTE = "export-watchdog"


def sends(log: str) -> Counter:
    """How many messages beat sent, per (minute, schedule entry)."""
    return Counter(SENT.findall(log))


def wait_for_ticks(pools, count: int = 2) -> None:
    """Wait until beat has run ``count`` scheduler ticks (each touches its heartbeat file)."""
    heartbeat = Path(pools.project.env["HEALTHCHECK_DIR"]) / "beat.heartbeat"
    before = heartbeat.stat().st_mtime_ns if heartbeat.exists() else 0
    seen = set()

    def ticked() -> bool:
        if heartbeat.exists() and (mtime := heartbeat.stat().st_mtime_ns) > before:
            seen.add(mtime)
        return len(seen) >= count

    wait_for(ticked, 60, f"{count} beat ticks", interval=0.05)


def sent_since(pools, offset: int) -> int:
    log = pools.log_path("beat").read_bytes()[offset:].decode(errors="replace")
    return sum(n for (_, entry), n in sends(log).items() if entry == EVERY_MINUTE)


def test_beat_stopped_or_killed_after_a_tick_never_sends_it_twice(project, pools):
    # Beat has sent ticks in its current life (it runs from the start of the session).
    wait_for(lambda: sent_since(pools, pools.log_offsets["beat"]), 75, "beat's first every-minute tick")

    # A deploy: SIGTERM. Beat shuts down cleanly and writes its schedule (each
    # entry's last run) to the database. Then back, as a process manager would.
    pools.signal("beat", signal.SIGTERM)
    start = pools.log_path("beat").stat().st_size
    pools.start("beat")
    wait_for(lambda: sent_since(pools, start), 75, "the restarted beat to send the next tick")

    # Right after that tick, before beat writes the run to the database (it
    # syncs every three minutes): the OOM killer, or a node lost. Then back.
    pools.signal("beat", signal.SIGKILL, whole_group=True)
    pools.start("beat")
    wait_for_ticks(pools)

    counts = sends(pools.log("beat"))
    assert sent_since(pools, start) >= 1, "beat logged no sends: the drill cannot see dispatches"
    twice = {key: n for key, n in counts.items() if n > 1}
    assert twice == {}, f"schedule entries sent more than once in the same minute: {twice}"
