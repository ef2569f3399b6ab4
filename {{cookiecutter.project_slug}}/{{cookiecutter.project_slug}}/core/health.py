"""Liveness and readiness for the web process, answered before any other middleware.

``/healthz``: the process serves requests (no database, no broker: a liveness
probe must not fail because a dependency is down, or the orchestrator restarts
healthy web processes in a loop). ``/readyz``: the database and the broker answer;
a load balancer stops routing to a process that is not ready.

Both come first in MIDDLEWARE: no host check, no HTTPS redirect, no session, and
they say nothing but "ok" or which dependency failed.

``/metrics`` is answered here too, for the same reasons: Prometheus scrapes it by
the compose service's name (``django:8000``, not the site's domain) over the
internal network in plain HTTP, so the host check and the HTTPS redirect of the
production settings would refuse it. It has its own basic auth (core/metrics.py).
"""

import logging

from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        logger.exception("readiness: database unreachable")
        return False


def broker_connection(timeout: float = 2):
    """A connection to the broker that gives up after about ``timeout`` seconds, whatever the broker does.

    For probes (/readyz, /metrics), never for the workers. ``connect_timeout``
    alone bounds the TCP connect; a broker that accepts the connection and then
    never answers (a Redis stuck in a long command, or swapping) would hang the
    probe for ever without a read timeout too (kombu's Redis transport has none
    by default). One attempt: the caller says "unavailable" and moves on.
    """
    from config.celery_app import app

    connection = app.connection_for_write(
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0},
    )
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except BaseException:
        connection.release()
        raise
    return connection


def broker_ok() -> bool:
    try:
        with broker_connection():
            return True
    except Exception:
        logger.exception("readiness: broker unreachable")
        return False


# --8<-- [start:readyz]
class HealthCheckMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/healthz":
            return JsonResponse({"status": "ok"})
        if request.path == "/readyz":
            checks = {"database": database_ok(), "broker": broker_ok()}
            body = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
            return JsonResponse(body, status=200 if all(checks.values()) else 503)
        if request.path == "/metrics":
            from .metrics import metrics_view  # here, not at the top: metrics uses broker_connection

            return metrics_view(request)
        return self.get_response(request)
        # --8<-- [end:readyz]
