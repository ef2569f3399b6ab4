"""Start Flower for this project, with every page behind its authentication.

    python -m config.flower [flower options]

Flower asks for FLOWER_BASIC_AUTH (user:password) on its UI and API, but serves
``/metrics`` (task names, worker names, counts) to anyone. Here ``/metrics`` needs
the same credentials; ``/healthcheck`` stays open (it only says "OK") for probes.
Without FLOWER_BASIC_AUTH (or FLOWER_AUTH for OAuth) Flower refuses to start:
an open Flower shows task arguments to whoever finds it. It refuses a
FLOWER_BASIC_AUTH with an empty user or password too (``flower:`` would let in
anyone who types "flower"), or one that is not ``user:password[,user:password...]``.
"""

import os
import sys

from celery.bin.celery import main as celery_main
from flower.views import monitor
from tornado import web


def basic_auth_problem(value: str) -> str | None:
    """What is wrong with a FLOWER_BASIC_AUTH value, or None. Never repeats a password.

    Flower splits the value on commas into ``user:password`` pairs and compares
    each pair with what the browser sends (the password may contain ":", not ",").
    """
    pairs = value.split(",")
    for number, pair in enumerate(pairs, start=1):
        where = f"pair {number} of {len(pairs)}" if len(pairs) > 1 else "the value"
        user, colon, password = pair.partition(":")
        if not colon:
            return f"{where} is not user:password (no ':')"
        if not user.strip():
            return f"{where} has an empty user"
        if not password.strip():
            return f"{where} has an empty password"
    return None


def main() -> None:
    basic_auth, oauth = os.environ.get("FLOWER_BASIC_AUTH", ""), os.environ.get("FLOWER_AUTH", "")
    if not (basic_auth or oauth):
        sys.exit("refusing to start Flower without authentication: set FLOWER_BASIC_AUTH=user:password")
    if basic_auth and (problem := basic_auth_problem(basic_auth)):
        sys.exit(f"refusing to start Flower: FLOWER_BASIC_AUTH is malformed, {problem}; set it to user:password")
    monitor.Metrics.get = web.authenticated(monitor.Metrics.get)
    sys.argv = ["celery", "--app=config.celery_app", "flower", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
