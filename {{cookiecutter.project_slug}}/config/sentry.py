"""Sentry: errors, traces and missed beat schedules, from web, every worker pool and beat.

``init()`` runs at the end of ``config/settings/base.py``: every process of the
project loads the settings before it does any work (web through WSGI, each worker
pool and beat through Celery's Django fixup, management commands through
``manage.py``), so one call covers them all. Without a DSN it does nothing at all.

What leaves the process is decided here, not in Sentry's web UI:

* no personal data: ``send_default_pii=False`` (no user ids, emails, IP addresses,
  cookies, request bodies, task arguments);
* no secrets: values whose *name* says secret (``password``, ``card_token``,
  ``email``, ...) are replaced before the event is sent, wherever they are: a local
  variable of a stack frame, a task's keyword argument, a request header, an extra;
* every task event is tagged with the task's name and the queue it came from;
* each beat schedule is a Sentry Crons monitor: beat reports every run it sends
  ("in progress") and the worker its outcome ("ok" or "error"), so a run that
  fails, or never comes, alerts.
"""

import logging
import os
import re

import sentry_sdk
from celery import signals
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, DEFAULT_PII_DENYLIST, EventScrubber

# --8<-- [start:denylist]
# Exact names (any case) that sentry-sdk's EventScrubber replaces, on top of its own
# list (password, secret, token, api_key, authorization, cookie, session ...): the
# names this project gives secrets and personal data.
DENYLIST = [
    *DEFAULT_DENYLIST,
    "card_token",
    "card_number",
    "cvc",
    "payment_method",
    "client_secret",
    "reset_token",
    "uidb64",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "webhook_secret",
    "secret_key",
    "new_password1",
    "new_password2",
    "old_password",
]
PII_DENYLIST = [*DEFAULT_PII_DENYLIST, "email", "author_email", "recipient_list", "to", "username"]

# Any name that *contains* one of these is scrubbed too (before_send below): the
# names nobody put on a list yet, like "user_password" or "customer_email".
SECRET_NAME = re.compile(r"passw|secret|token|card|cvc|cvv|iban|email|api_?key|authorization|cookie|dsn", re.I)
# --8<-- [end:denylist]
SCRUBBED = "[Filtered]"


# --8<-- [start:init]
def init(
    dsn: str,
    *,
    environment: str = "",
    release: str = "",
    traces_sample_rate: float = 0.0,
    profiles_sample_rate: float = 0.0,
) -> None:
    """Set Sentry up for this process; do nothing without a DSN (development, tests, CI)."""
    if not dsn:
        return
    sentry_sdk.init(
        dsn=dsn,
        # "production", "local" ...: the settings module this process runs with, unless set.
        environment=environment or os.environ.get("DJANGO_SETTINGS_MODULE", "").rpartition(".")[2] or None,
        release=release or None,  # None: SENTRY_RELEASE, or the git commit if there is one
        integrations=[
            DjangoIntegration(),
            # monitor_beat_tasks: beat's schedule entries become Crons monitors.
            CeleryIntegration(monitor_beat_tasks=True),
            # INFO and above become breadcrumbs of the next event; ERROR lines
            # (logger.error, logger.exception) become events of their own.
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        # Fractions of requests and tasks traced (and of those, profiled): 0 sends
        # errors and check-ins only. Tracing every task of a busy queue costs money.
        traces_sample_rate=traces_sample_rate,
        profiles_sample_rate=profiles_sample_rate,
        send_default_pii=False,
        event_scrubber=EventScrubber(denylist=DENYLIST, pii_denylist=PII_DENYLIST, recursive=True),
        before_send=scrub_secret_names,
        before_send_transaction=scrub_secret_names,
    )
    # Every task's events say which task and which queue (tag_task below).
    signals.task_prerun.connect(tag_task)
    # --8<-- [end:init]


# --8<-- [start:scrub]
def scrub_secret_names(event, hint):
    """Replace every value whose key names a secret, anywhere in the event (None: drop it).

    The EventScrubber matches whole names; this catches the rest ("user_password",
    "customer_email"). Local variables are kept for the project's own frames only,
    where the names are ours. A task's positional arguments carry no name to judge
    them by and are dropped: the task's own frame shows them under their parameter
    names, scrubbed or not by the same rule.
    """
    if event.get("logger") == "tasks" and str((event.get("logentry") or {}).get("message")).startswith("task="):
        # The run log line of a failed task (core/task_base.py, at ERROR): the Celery
        # integration has reported the exception itself, with its traceback.
        return None
    for frame in _frames(event):
        if not frame.get("in_app"):
            # A library's frame (Celery's tracer, Django's handlers, a driver) holds
            # whatever passes through it: the task message, the request. Its variables
            # arrive as one long repr string that no name-based rule can look into.
            frame.pop("vars", None)
    job = event.get("extra", {}).get("celery-job")
    if isinstance(job, dict) and "args" in job:
        job["args"] = SCRUBBED
    _scrub(event)
    return event


def _frames(event):
    for source in ("exception", "threads"):
        for value in (event.get(source) or {}).get("values") or ():
            yield from (value.get("stacktrace") or {}).get("frames") or ()


def _scrub(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and SECRET_NAME.search(key):
                value[key] = SCRUBBED
            else:
                _scrub(item)
    elif isinstance(value, list):
        for item in value:
            _scrub(item)
    # --8<-- [end:scrub]


# --8<-- [start:tag-task]
def tag_task(sender=None, task=None, **kwargs):
    """Tag what a task reports with its name and the queue it was delivered from.

    task_prerun runs inside the scope sentry-sdk opens for each task, so the tags
    stay with this task's events only. In Sentry, search ``celery_queue:high``.
    """
    from {{ cookiecutter.project_slug }}.core.task_base import queue_of

    sentry_sdk.set_tag("celery_task", task.name)
    sentry_sdk.set_tag("celery_queue", queue_of(task.request, task) or "unknown")
    # --8<-- [end:tag-task]
