"""Sentry: errors, traces and missed beat schedules, from web, every worker pool and beat.

``init()`` runs at the end of ``config/settings/base.py``: every process of the
project loads the settings before it does any work (web through WSGI, each worker
pool and beat through Celery's Django fixup, management commands through
``manage.py``), so one call covers them all. Without a DSN it does nothing at all.

What leaves the process is decided here, by what is *allowed*, not in Sentry's
web UI and not by a list of names someone has to remember to extend:

* what the code wrote: exception types, stack frames (file, function, line), log
  message templates, task and logger names, tags, the SQL of a query (its
  parameters stay behind);
* what the code saw, only as numbers: a frame's local variables, a log line's
  arguments and a breadcrumb's data are kept when they are numbers (ids, counts,
  sizes) or dotted names (``myproject.payments.tasks.charge``), never as text. A
  string under an innocent name (``path`` holding a password-reset link) cannot
  be told from a harmless one, so no string goes;
* never a task's arguments (positional or keyword), a request's body, cookies,
  query string or any header but a few plain ones, a Redis command's values;
* free text that must stay readable (an exception's message, a URL's path, a
  span's description) passes through ``redact()``, which replaces what looks like
  an email address, a URL's path, a card or phone number or a long token;
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

from config.privacy import FILTERED, allowed, redact, redact_url

# --8<-- [start:headers]
# The request headers that may be sent (cookies, authorization, referer with its
# reset link, and anything a proxy adds do not).
PLAIN_HEADERS = {
    "host",
    "user-agent",
    "accept",
    "accept-language",
    "content-type",
    "content-length",
    "x-forwarded-proto",
}
# --8<-- [end:headers]


def allowed_repr(value) -> bool:
    """``allowed()`` for a frame's local variable, which sentry-sdk sends as its repr:
    ``17`` is a number, ``'17'`` a string."""
    if not isinstance(value, str):
        return False  # a dict or a list: its items may be anything
    if value in {"None", "True", "False"}:
        return True
    if re.fullmatch(r"-?\d+(?:\.\d+)?", value):
        return allowed(float(value))
    return value[:1] in {"'", '"'} and allowed(value)


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
        # No user, IP address, cookies or request bodies, whatever the integrations offer.
        send_default_pii=False,
        max_request_body_size="never",
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
    )
    # Every task's events say which task and which queue (tag_task below).
    signals.task_prerun.connect(tag_task)
    # --8<-- [end:init]


# --8<-- [start:scrub]
def scrub_event(event, hint):
    """Keep what ``allowed()`` allows and redact free text, everywhere in an event or a transaction."""
    if event.get("logger") == "tasks" and str((event.get("logentry") or {}).get("message")).startswith("task="):
        # The run log line of a failed task (core/task_base.py, at ERROR): the Celery
        # integration has reported the exception itself, with its traceback.
        return None
    for frame in _frames(event):
        # Local variables: numbers and dotted names, and only in the project's own frames.
        # A library's frame (Celery's tracer, Django's handlers) holds the task message
        # or the request whole.
        kept = {name: value for name, value in (frame.pop("vars", None) or {}).items() if allowed_repr(value)}
        if kept and frame.get("in_app"):
            frame["vars"] = kept
    for exception in (event.get("exception") or {}).get("values") or ():
        if isinstance(exception.get("value"), str):
            exception["value"] = redact(exception["value"])
    if event.get("logentry"):
        event["logentry"] = log_entry(event["logentry"]["message"], event["logentry"].get("params"))
    extra = event.get("extra") or {}
    if isinstance(extra.get("celery-job"), dict):
        job = extra["celery-job"]
        extra["celery-job"] = {"task_name": job.get("task_name"), "args": FILTERED, "kwargs": FILTERED}
    event["extra"] = {
        name: value for name, value in extra.items() if name in {"celery-job", "sys.argv"} or allowed(value)
    }
    if event.get("request"):
        event["request"] = plain_request(event["request"])
    # Breadcrumbs were kept back as they were recorded (before_breadcrumb=scrub_breadcrumb).
    for span in event.get("spans") or ():
        span["description"] = describe(span.get("op") or "", span.get("description") or "")
        span["data"] = {name: value for name, value in (span.get("data") or {}).items() if allowed(value)}
    if event.get("transaction"):
        event["transaction"] = redact(event["transaction"])
    return event


def scrub_breadcrumb(crumb, hint):
    """A log line's template with its allowed arguments; other breadcrumbs' text redacted, data as numbers."""
    record = (hint or {}).get("log_record")
    if record is not None:
        crumb["message"] = log_entry(record.msg, record.args)["formatted"]
    else:
        crumb["message"] = describe(crumb.get("category") or "", crumb.get("message") or "")
    crumb["data"] = {name: value for name, value in (crumb.get("data") or {}).items() if allowed(value)}
    return crumb


def log_entry(template, params) -> dict:
    """A log line as its template (code) and its arguments, those ``allowed()`` kept, the others filtered."""
    template = str(template)
    if isinstance(params, dict):
        kept = {name: value if allowed(value) else FILTERED for name, value in params.items()}
    else:
        kept = tuple(value if allowed(value) else FILTERED for value in params or ())
    try:  # "%d" of "[Filtered]" fails: format everything as text
        formatted = re.sub(r"%(\(\w+\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]", r"%\1s", template) % kept
    except (TypeError, ValueError, KeyError):
        formatted = template
    return {"message": template, "params": kept, "formatted": redact(formatted)}


def describe(kind: str, text: str) -> str:
    """A span's or breadcrumb's description: SQL as written; a Redis command by its name; any other redacted."""
    if kind == "query" or (kind.startswith("db") and "redis" not in kind):
        return text  # SQL with placeholders: its parameters are never recorded
    if "redis" in kind:
        return text.split(" ", 1)[0]  # SET, not SET <key> <value>
    return redact(text)


def plain_request(request: dict) -> dict:
    """A request as method, URL (its path redacted) and plain headers: no query string, body or cookies."""
    headers = request.get("headers") or {}
    return {
        "method": request.get("method"),
        "url": redact_url(str(request.get("url") or "")),
        "headers": {name: value for name, value in headers.items() if name.lower() in PLAIN_HEADERS},
    }


def _frames(event):
    for source in ("exception", "threads"):
        for value in (event.get(source) or {}).get("values") or ():
            yield from (value.get("stacktrace") or {}).get("frames") or ()
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
