"""Start one worker pool with the profile declared in ``config/topology.py``.

    python -m config.worker worker-high           # replace this process with the worker
    python -m config.worker worker-high --print   # only show the command line

The ``Procfile`` and every compose worker service use exactly this command, so the
pools run the same way natively, in development containers and in production.

Environment:
  WORKER_<POOL>_CONCURRENCY   override the pool's concurrency (e.g. small in tests)
  CELERY_LOG_LEVEL            worker log level (default INFO)
  WORKER_NODE_PREFIX          put before the node name: the test suite's pools are
                              ``test-<pid>-high@host``, never a running make dev's ``high@host``
  CELERY_WORKER_AUTORELOAD    "1" restarts the worker when Python files change
                              (development only; needs watchfiles; config/autoreload.py)
  REMAP_SIGTERM               set to SIGQUIT unless given: SIGTERM starts Celery's
                              soft shutdown instead of waiting for every task
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from config.topology import POOLS, pool_named


def build_command(pool_name: str, environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    pool = pool_named(pool_name)
    concurrency = environ.get(pool.concurrency_env)
    args = pool.celery_args(
        concurrency=int(concurrency) if concurrency else None,
        loglevel=environ.get("CELERY_LOG_LEVEL", "INFO"),
        node_prefix=environ.get("WORKER_NODE_PREFIX", ""),
    )
    return [sys.executable, "-m", "celery", *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m config.worker", description=__doc__.splitlines()[0])
    parser.add_argument("pool", choices=[pool.name for pool in POOLS])
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    options = parser.parse_args(argv)

    pool = pool_named(options.pool)
    command = build_command(pool.name)
    autoreload = os.environ.get("CELERY_WORKER_AUTORELOAD") == "1"
    if options.print:
        print(shlex.join(command))
        return
    # --8<-- [start:remap-sigterm]
    # Celery treats SIGTERM (what Docker, systemd and honcho send) as a *warm*
    # shutdown: wait for every running task, however long. A 30-minute export
    # would hold up a deploy until Docker's SIGKILL, and its message would then
    # wait out the visibility timeout. Remapped to SIGQUIT, SIGTERM starts the
    # soft shutdown instead: running tasks get the pool's soft_shutdown_timeout
    # to finish, then the rest are cancelled and their messages handed back to
    # the broker at once (late acks).
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    sys.stdout.flush()
    if autoreload:
        # Development: restart on code changes; SIGTERM still reaches the worker
        # as a soft shutdown, on stop and on every reload.
        from config import autoreload as reloader

        sys.exit(reloader.run(command, ".", reload_grace=pool.soft_shutdown_timeout))
    os.execv(command[0], command)  # noqa: S606 -- exec: signals from Docker/honcho reach the worker directly
    # --8<-- [end:remap-sigterm]


if __name__ == "__main__":
    main()
