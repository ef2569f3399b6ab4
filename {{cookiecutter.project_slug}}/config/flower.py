"""Start Flower for this project, with every page behind its authentication.

    python -m config.flower [flower options]

Flower asks for FLOWER_BASIC_AUTH (user:password) on its UI and API, but serves
``/metrics`` (task names, worker names, counts) to anyone. Here ``/metrics`` needs
the same credentials; ``/healthcheck`` stays open (it only says "OK") for probes.
Without FLOWER_BASIC_AUTH (or FLOWER_AUTH for OAuth) Flower refuses to start:
an open Flower shows task arguments to whoever finds it.
"""

import os
import sys

from celery.bin.celery import main as celery_main
from flower.views import monitor
from tornado import web


def main() -> None:
    if not (os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")):
        sys.exit("refusing to start Flower without authentication: set FLOWER_BASIC_AUTH=user:password")
    monitor.Metrics.get = web.authenticated(monitor.Metrics.get)
    sys.argv = ["celery", "--app=config.celery_app", "flower", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
