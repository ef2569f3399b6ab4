"""Restart a worker pool when Python files change, passing its soft shutdown through.

Development only (``CELERY_WORKER_AUTORELOAD=1``, used by ``python -m config.worker``).

Why not ``watchfiles "celery worker ..." .``, the usual recipe? Its runner becomes
PID 1 in the container. On ``docker compose stop`` (SIGTERM) and on every code
change it sends the worker SIGINT, which Celery treats as a *warm* shutdown, and
SIGKILLs it five seconds later. A running export is killed mid-batch and its job
waits for its lease to expire, instead of being handed back at once.

This runner keeps the worker in a child process and:

* on a change, sends it SIGTERM (Celery's soft shutdown, see ``config/worker.py``),
  waits up to the pool's soft-shutdown time plus a margin, then starts it again;
* on SIGTERM or SIGINT, forwards that signal, waits for the worker to finish its
  shutdown, and exits with the worker's status. Docker's ``stop_grace_period``
  (or honcho's timeout) still bounds the whole stop.

The worker runs in its own session, so a signal meant for this runner's process
group (a terminal's Ctrl-C, honcho) reaches the worker once, through the runner;
and it gets SIGTERM if the runner itself dies.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading

MARGIN_SECONDS = 15  # on top of the pool's soft-shutdown time, before SIGKILL on reload
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: get SIGTERM when the runner dies, instead of living on as an orphan."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_child(child: subprocess.Popen, signum: int, timeout: float | None) -> int:
    if child.poll() is None:
        child.send_signal(signum)
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"autoreload: worker still running after {timeout:.0f}s, killing it", file=sys.stderr, flush=True)
        child.kill()
        return child.wait()


# --8<-- [start:run]
def run(command: list[str], watch_path: str, reload_grace: float) -> int:
    """Run ``command``, restarting it on changes under ``watch_path``; return its exit status."""
    import watchfiles  # development dependency (requirements/local.txt)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    while True:
        child = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
        # Blocks until a .py file changes or a signal sets ``stop``.
        watcher = watchfiles.watch(
            watch_path, watch_filter=watchfiles.PythonFilter(), stop_event=stop, raise_interrupt=False
        )
        changes = next(watcher, set())
        if stop.is_set():
            # Stopping: the worker gets the signal we got and all the time it needs.
            return _stop_child(child, received[-1], timeout=None)
        changed = ", ".join(sorted({path for _change, path in changes}))
        print(f"autoreload: {changed} changed, restarting the worker (soft shutdown)", file=sys.stderr, flush=True)
        _stop_child(child, signal.SIGTERM, timeout=reload_grace + MARGIN_SECONDS)


# --8<-- [end:run]
