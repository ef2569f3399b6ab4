"""What reaches Sentry from this process: config/sentry.py's allow-list, against a local ingest.

``config.sentry.init()`` is pointed at an in-process stand-in for Sentry's ingest
endpoint (tests/sentry_ingest.py) and the project's real code fails under it: a
password reset whose SMTP server is down, a log line that quotes what it was
given, a request with a reset link in its path and a token in its query. Every
byte sent is searched for the secrets, whatever their names. (The worker side,
task arguments passed by keyword and by position and poison messages, is in
tests/test_sentry_integration.py.)
"""

import logging
import urllib.error
import urllib.parse
import urllib.request

import pytest
import sentry_sdk
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

import config.sentry
from {{ cookiecutter.project_slug }}.users import tasks as user_tasks

from .conftest import free_port

pytest_plugins = ["tests.sentry_ingest"]  # the ingest fixture

EMAIL = "ada.lovelace@example.org"
CARD = "4242 4242 4242 4242"
TOKEN = "sk_live_51Hx9Qd2eZvKYlo2C0ffee4242abc"
logger = logging.getLogger("{{ cookiecutter.project_slug }}.tests")
logger.setLevel(logging.INFO)  # INFO lines are breadcrumbs


@pytest.fixture
def sentry_to(ingest):
    """Sentry set up by the project's own init(), sending to ``ingest``; off again afterwards."""
    config.sentry.init(ingest.dsn, environment="test")
    yield ingest
    sentry_sdk.get_client().close()  # flushes: everything captured has reached the ingest
    sentry_sdk.init()  # no DSN: nothing is sent by the tests that follow


def events(ingest) -> list[dict]:
    sentry_sdk.flush()  # the transport sends from a thread of its own
    return ingest.events()


def sent(ingest) -> str:
    sentry_sdk.flush()
    return b"".join(ingest.raw).decode()


@csrf_exempt  # the failure, not CSRF's 403, is what is reported
def fail(request, token):
    raise RuntimeError("a page that fails")


# This module is the URLconf of the request test.
urlpatterns = [path("fail/<str:token>/", fail)]


@pytest.mark.django_db
def test_a_reset_link_in_a_failing_frame_never_leaves(sentry_to):
    """The reset task's own frame, with SMTP unreachable: its locals ``path`` and
    ``context["reset_url"]`` are a working reset link under names no deny-list has."""
    user = get_user_model().objects.create_user("ada", EMAIL, "pw")
    smtp = override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=free_port()
    )
    with smtp, pytest.raises(ConnectionRefusedError) as failure:
        user_tasks._send(user)
    sentry_sdk.capture_exception(failure.value)

    [event] = events(sentry_to)
    frames = {frame["function"]: frame for frame in event["exception"]["values"][0]["stacktrace"]["frames"]}
    assert "_send" in frames  # the frame is reported, its strings are not
    assert "reset_url" not in frames["_send"].get("vars", {})
    assert "path" not in frames["_send"].get("vars", {})
    text = sent(sentry_to)
    assert "/reset/" not in text
    assert EMAIL not in text


def test_log_lines_send_their_template_and_numbers_only(sentry_to):
    logger.info("charging %s with card %s", EMAIL, CARD)  # a breadcrumb of the next event
    logger.error("order %s: the provider said %r for key %s", 42, f"declined {EMAIL}", TOKEN)

    [event] = events(sentry_to)
    assert event["logentry"]["message"] == "order %s: the provider said %r for key %s"
    assert event["logentry"]["params"] == [42, "[Filtered]", "[Filtered]"]
    [crumb] = [crumb for crumb in event["breadcrumbs"]["values"] if crumb["category"] == logger.name]
    assert crumb["message"] == "charging [Filtered] with card [Filtered]"
    text = sent(sentry_to)
    assert not [secret for secret in (EMAIL, CARD, TOKEN, "declined") if secret in text]


def test_exception_messages_keep_their_words_and_lose_their_secrets(sentry_to):
    try:
        raise ValueError(f"card {CARD} of {EMAIL} refused, see https://pay.example.com/r/{TOKEN}?k={TOKEN}")
    except ValueError as error:
        sentry_sdk.capture_exception(error)

    [event] = events(sentry_to)
    assert event["exception"]["values"][0]["value"] == (
        "card [number] of [email] refused, see https://pay.example.com/[path]"
    )
    assert TOKEN not in sent(sentry_to)


def test_a_request_sends_its_path_without_tokens_and_no_query_body_or_cookie(sentry_to, live_server):
    """A page that fails, served by a real WSGI server: the request as Sentry's Django integration reports it."""
    request = urllib.request.Request(  # noqa: S310 (the live server's http:// URL)
        f"{live_server.url}/fail/{TOKEN}/?email={EMAIL}",
        data=urllib.parse.urlencode({"password": "hunter2-in-a-form", "card": CARD}).encode(),
        headers={
            "Cookie": f"sessionid={TOKEN}",
            "Referer": f"https://example.com/reset/MQ/{TOKEN}/",
            "User-Agent": "pytest",
        },
    )
    with override_settings(ROOT_URLCONF=__name__), pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=10)  # noqa: S310

    [event] = events(sentry_to)
    sent_request = event["request"]
    assert (sent_request["method"], sent_request["url"]) == ("POST", f"{live_server.url}/fail/[token]/")
    assert sent_request["headers"]["User-Agent"] == "pytest"
    assert set(sent_request["headers"]) <= {"User-Agent", "Content-Type", "Content-Length", "Host", "Accept"}
    assert set(sent_request) == {"method", "url", "headers"}  # no query string, body, cookies or environment
    text = sent(sentry_to)
    assert not [secret for secret in (EMAIL, CARD, TOKEN, "hunter2-in-a-form") if secret in text]


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        (17, True),
        (None, True),
        (True, True),
        ("'{{ cookiecutter.project_slug }}.payments.tasks.process_payment'", True),
        (4242424242424242, False),  # a card number as an int
        ("'A-17'", False),
        ("'hunter2'", False),
        (f"'{EMAIL}'", False),
        ("{'reset_url': 'https://example.com/reset/MQ/x/'}", False),
    ],
)
def test_allowed_values(value, allowed):
    assert config.sentry.allowed(value) is allowed


@pytest.mark.parametrize(
    ("variable", "allowed"),
    [
        ("17", True),  # the repr of 17
        ("None", True),
        ("'{{ cookiecutter.project_slug }}.payments.tasks.process_payment'", True),
        ("'17'", False),  # the repr of "17": a string, maybe a PIN
        ("4242424242424242", False),
        ("'A-17'", False),
        ({"reset_url": "'https://example.com/reset/MQ/x/'"}, False),
    ],
)
def test_allowed_variables(variable, allowed):
    """A frame's local variables arrive as reprs: a number is told from a string by its quotes."""
    assert config.sentry.allowed_repr(variable) is allowed
