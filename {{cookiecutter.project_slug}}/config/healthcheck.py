"""Cheap health checks for compose (``healthcheck: test``), run inside the container.

    python -m config.healthcheck worker-high   # its heartbeat file is fresh
    python -m config.healthcheck beat          # beat's heartbeat file is fresh
    python -m config.healthcheck outbox-relay  # the outbox relay's heartbeat file is fresh
    python -m config.healthcheck web           # GET /healthz answers 200
    python -m config.healthcheck flower        # Flower's open /healthcheck answers 200

Worker pools, beat and the outbox relay touch a heartbeat file from their own main
loop (see ``config/celery_app.py``, ``core/beat.py`` and the ``outbox_relay``
command): a fresh file proves the loop runs, without the broker round trip of
``celery inspect ping`` on every probe and without importing Django. Exit status 0 is healthy, 1 is not.

A worker pool or beat whose heartbeat is stale while its broker does not accept
connections passes: the loop is waiting for the broker, and restarting the process
(what Kubernetes does when a liveness probe fails) would not bring the broker back;
it would only add a restart back-off to the outage. Anything else stale fails.

Environment: HEALTHCHECK_DIR (where the files live), HEALTHCHECK_MAX_AGE (seconds, 60),
CELERY_BROKER_URL or else REDIS_URL (the broker whose port is tried).
"""

import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from config.topology import POOLS, pool_named

HEARTBEAT_INTERVAL = 10  # seconds between touches


def heartbeat_dir() -> Path:
    return Path(os.environ.get("HEALTHCHECK_DIR") or Path(tempfile.gettempdir()) / "celery-health")


def heartbeat_file(process: str) -> Path:
    """``worker-high`` -> <dir>/worker-high.heartbeat; ``beat`` -> <dir>/beat.heartbeat."""
    return heartbeat_dir() / f"{process}.heartbeat"


def touch(process: str) -> None:
    path = heartbeat_file(process)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def fresh(process: str, max_age: float) -> bool:
    try:
        return time.time() - heartbeat_file(process).stat().st_mtime <= max_age
    except FileNotFoundError:
        return False


def answers(port: str, path: str) -> bool:
    """GET ``path`` on this host answers 200 (unauthenticated pages: /healthz, Flower's /healthcheck)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def unreachable_broker() -> str | None:
    """``host:port`` of the broker when it refuses connections; None when it accepts them (or is unknown)."""
    url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")
    if not url:
        return None
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or (6379 if parts.scheme.startswith("redis") else 5672))
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError:
        return f"{address[0]}:{address[1]}"
    return None


def main(argv: list[str]) -> int:
    names = ["web", "flower", "beat", "outbox-relay", *(pool.name for pool in POOLS)]
    if len(argv) != 1 or argv[0] not in names:
        print("usage: python -m config.healthcheck " + "|".join(names), file=sys.stderr)
        return 2
    process = argv[0]
    if process == "web":
        healthy = answers(os.environ.get("PORT", "8000"), "/healthz")
    elif process == "flower":
        healthy = answers(os.environ.get("FLOWER_PORT", "5555"), "/healthcheck")
    else:
        if process not in ("beat", "outbox-relay"):
            pool_named(process)
        healthy = fresh(process, float(os.environ.get("HEALTHCHECK_MAX_AGE", "60")))
        if not healthy and process != "outbox-relay" and (broker := unreachable_broker()):
            print(f"heartbeat stale, but the broker ({broker}) refuses connections: a restart would not help")
            return 0
    print("healthy" if healthy else "unhealthy")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
