import logging
from math import ceil

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import ngettext

from .. import outbox
from . import throttle
from .models import PasswordResetRequest
from .tasks import send_password_reset_email

logger = logging.getLogger(__name__)


# --8<-- [start:throttled-login]
class ThrottledLoginMixin:
    """Refuses a login whose account or client address is out of attempts (users/throttle.py).

    The attempt is counted before the password is checked, and refused before it
    is checked once over the limit: the right password does not get in either,
    and a locked-out client learns nothing about the passwords it tries. The
    message says so, and for how long; it is the same for an account that does
    not exist. A successful login clears the account's count.
    """

    def clean(self):
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if not (username and password):
            return super().clean()  # nothing is tried: the form says what is missing
        account, client = throttle.login_limits(self.request, username)
        if retry_after := throttle.hit(account, client):
            logger.warning("login refused: too many attempts (%s)", client.key)
            minutes = ceil(retry_after / 60)
            raise ValidationError(
                ngettext(
                    "Too many failed attempts to log in. Try again in %(minutes)d minute.",
                    "Too many failed attempts to log in. Try again in %(minutes)d minutes.",
                    minutes,
                ),
                code="throttled",
                params={"minutes": minutes},
            )
        cleaned_data = super().clean()  # a wrong password raises here: the attempt stays counted
        throttle.clear(account)
        throttle.refund(client)  # the people behind one office router log in all morning
        return cleaned_data


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    """The site's login form (users/views.py)."""


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin's login form (``admin.site.login_form``, set in users/admin.py)."""


# --8<-- [end:throttled-login]


# --8<-- [start:queued-reset-form]
class QueuedPasswordResetForm(PasswordResetForm):
    """Django's password reset form, with the accounts looked up and emailed by a worker on ``high``.

    The request does the same work for any address: count it against the limits,
    write one request row and one outbox message, publish after COMMIT. Whether an
    account has the address is found out by the task, so neither the page nor the
    time it takes tells anyone (Django's own form looks the accounts up in the
    request and writes only for a known one). The request returns at once, even
    with the broker down; the email goes out on the fast pool, so a long export can
    never hold it up.
    """

    def save(self, request=None, **email_options):
        # email_options (templates, domain, token generator) are Django's for its own
        # send_mail; the task renders users/password_reset_*.txt with SITE_URL.
        email = self.cleaned_data["email"]
        if throttle.hit(*throttle.reset_limits(request, email)):
            # Silently: the page says what it says for every address. Nothing tells
            # a flood's sender (or an address's owner) that this one was dropped.
            logger.warning("password reset dropped: too many requests for the address or from the client")
            return
        # One row and its message commit together and the message is published after
        # COMMIT, or by the outbox relay if the broker is down: the user gets the
        # email either way (docs/outbox.md). Ids only: arguments must be JSON, and
        # the task re-reads the row.
        with transaction.atomic():
            reset = PasswordResetRequest.objects.create(email=email)
            outbox.send(send_password_reset_email, None, reset.pk)
        # --8<-- [end:queued-reset-form]
