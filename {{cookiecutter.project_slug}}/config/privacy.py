"""What may leave the process: one allow-list for error reports, traces and Django's error pages.

A deny-list of names cannot be complete: a password-reset link sits in a local
variable called ``path``, a card token in a task's positional ``args``, a
database password in ``DATABASE_URL``. So the rule is the other way round:

* what the code wrote may leave (exception types, function names, log message
  templates, routes, SQL with its placeholders);
* what the code *saw* (arguments, variables, request data) may leave only as a
  number (an id, a count) or a dotted name (``myproject.payments.tasks.charge``):
  ``allowed()``;
* free text that must stay readable (an exception's message, a URL) passes
  through ``redact()``, which replaces what looks like an email address, a URL's
  path, a card or phone number, or a long token.

Error reporting and tracing, where the project has them, apply it to what they
send; ``ErrorPageFilter`` below applies it to Django's DEBUG error page.
"""

import re
from urllib.parse import urlsplit, urlunsplit

from django.views.debug import SafeExceptionReporterFilter

# --8<-- [start:allowed]
FILTERED = "[Filtered]"
# Integers beyond this may be card, phone or account numbers, not ids or counts.
LARGEST_NUMBER = 10**12
# A dotted name: a task, logger, module or model, written by the code, not typed by a user.
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
# Free text keeps its words; these shapes inside it are replaced.
SHAPES = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s'\"]+)/[^\s'\"]*", re.IGNORECASE), r"\1/[path]"),
    (re.compile(r"(?<!\w)\d(?:[ -]?\d){8,18}(?!\w)"), "[number]"),
    # 20+ letters, digits, - or _ with at least one digit and one letter: keys, tokens, signatures.
    (re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{20,}"), "[token]"),
]


def allowed(value) -> bool:
    """Whether a value the code *saw* may leave the process: a number, or a dotted name."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return abs(value) < LARGEST_NUMBER
    return isinstance(value, str) and len(value) <= 200 and DOTTED_NAME.fullmatch(value.strip("'\"")) is not None


def redact(text: str) -> str:
    """Free text with every email address, URL path, long number and token replaced."""
    for shape, replacement in SHAPES:
        text = shape.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """A URL (or a path) without its query, its path redacted: ``https://host/reset/MQ/[token]/``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, redact(parts.path), "", ""))
    # --8<-- [end:allowed]


# --8<-- [start:error-pages]
# The WSGI variables a DEBUG error page may show of request.META: the request's
# own, and the server's. runserver (wsgiref) copies the whole process environment
# into META, so DATABASE_URL, REDIS_URL and every other setting from the
# environment would be on the page, under names Django's own filter does not know.
PLAIN_META = re.compile(
    r"HTTP_(?!COOKIE$|AUTHORIZATION$|PROXY_AUTHORIZATION$|X_CSRFTOKEN$).*"
    r"|CONTENT_LENGTH|CONTENT_TYPE|PATH_INFO|QUERY_STRING|REMOTE_ADDR|REMOTE_HOST|REQUEST_METHOD|SCRIPT_NAME"
    r"|SERVER_NAME|SERVER_PORT|SERVER_PROTOCOL|SERVER_SOFTWARE|GATEWAY_INTERFACE|wsgi\..*"
)


class ErrorPageFilter(SafeExceptionReporterFilter):
    """Django's DEBUG error page, with request.META shown only for plain WSGI variables.

    Settings are hidden by name, as Django does, with URLs, DSNs and basic-auth
    pairs added: a URL setting carries its password (``DATABASE_URL``,
    ``CELERY_BROKER_URL``). DEFAULT_EXCEPTION_REPORTER_FILTER in the settings.
    """

    hidden_settings = re.compile(r"API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DSN|AUTH", flags=re.I)

    def get_safe_cookies(self, request):
        """Every cookie's name, none of their values (session ids, CSRF tokens)."""
        return dict.fromkeys(getattr(request, "COOKIES", {}), self.cleansed_substitute)

    def get_safe_request_meta(self, request):
        if not hasattr(request, "META"):
            return {}
        return {
            name: value if PLAIN_META.fullmatch(name) else self.cleansed_substitute
            for name, value in request.META.items()
        }
        # --8<-- [end:error-pages]
