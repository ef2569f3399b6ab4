import logging
from datetime import timedelta
from smtplib import SMTPException

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from .. import outbox
from ..core.tasks import delete_in_batches
from .models import PasswordResetRequest

logger = logging.getLogger(__name__)

# --8<-- [start:send-password-reset]
# How long a claim stays valid. Longer than the high pool's 30 s hard limit: once
# it expires, whoever claimed the email is certainly dead and another try may send.
CLAIM_LEASE = timedelta(seconds=60)


@shared_task(autoretry_for=(OSError, SMTPException))
def send_password_reset_email(user_id: int | None, request_id: int | None = None) -> str:
    """Email a password-reset link to user ``user_id``, or to the accounts of request ``request_id``'s address.

    Routed to "high", whose pool kills it after 30 s. Takes ids and re-reads:
    the rows may have changed or gone since the request. A missing or inactive
    user is logged and the task ends (retrying would not make the user exist).
    SMTP failures are retried with backoff.

    With ``user_id`` None (the reset form, which does not look accounts up so
    that its answer and its timing are the same for every address) the accounts
    are those Django's own form would email: active, with a usable password and
    that address. Finding none is an answer too: the request is marked done and
    nothing is sent.

    With ``request_id`` the email is sent once per request even if the message is
    delivered twice: the task first claims the request row with one UPDATE, and
    only the claimant sends. If sending fails the claim is released for the retry;
    if the worker dies mid-send the claim expires after CLAIM_LEASE. (A crash
    after SMTP accepted the email and before ``sent_at`` is written can still
    send a second email after the lease: SMTP offers no idempotency key.)
    """
    if user_id is None and request_id is None:
        raise TypeError("send_password_reset_email needs a user id or a request id")
    requests = PasswordResetRequest.objects.filter(pk=request_id, sent_at__isnull=True)
    if user_id is not None:
        User = get_user_model()
        try:
            users = [User.objects.get(pk=user_id, is_active=True)]
        except User.DoesNotExist:
            logger.warning("password reset: no active user %s, nothing sent", user_id)
            return "skipped"
        requests = requests.filter(user_id=user_id)

    if request_id is not None:
        now = timezone.now()
        claimable = Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_LEASE)
        if not requests.filter(claimable).update(claimed_at=now):
            logger.info("password reset %s: already sent or being sent", request_id)
            return "already-sent"

    if user_id is None:
        email = PasswordResetRequest.objects.values_list("email", flat=True).get(pk=request_id)
        users = list(PasswordResetForm().get_users(email))
        if not users:
            requests.update(sent_at=timezone.now())
            logger.info("password reset %s: no active account has the address, nothing sent", request_id)
            return "no-account"
        requests.update(user=users[0])

    try:
        for user in users:
            _send(user)
    except Exception:
        if request_id is not None:
            requests.update(claimed_at=None)  # let the retry claim it
        raise
    if request_id is not None:
        requests.update(sent_at=timezone.now())
    for user in users:
        logger.info("password reset email sent to user %s", user.pk)
    return "sent"
    # --8<-- [end:send-password-reset]


# --8<-- [start:resend-lost-resets]
# A request still unsent a claim lease after it was made, and not claimed now, lost
# its message or its sender. With Redis, a worker that was killed (OOM, a node lost)
# while it ran or held the message leaves it in the broker's unacked hash until the
# visibility timeout: an hour. A pool process killed mid-send is retried at once, but
# the retry finds the dead sender's claim still held and stands down. Either way
# nothing else would ever send it, and nobody wants a reset link an hour late.
RESEND_AFTER = CLAIM_LEASE
# Sent again at most this often, and only while the link is still worth sending.
MAX_RESENDS = 3
RESEND_WITHIN = timedelta(minutes=30)


@shared_task
def resend_lost_password_resets(dry_run: bool = False) -> list[int]:
    """Send again the reset requests whose message was lost (beat, every minute); returns their ids.

    Safe to overlap with the lost message, if it ever comes back: the claim in
    ``send_password_reset_email`` lets one of them send. Bounded: a request is
    sent again at most MAX_RESENDS times (an SMTP outage ends in the task's dead
    letters, not in a resend every minute), and not after RESEND_WITHIN.
    """
    now = timezone.now()
    lost = (
        PasswordResetRequest.objects.filter(sent_at__isnull=True, resends__lt=MAX_RESENDS)
        .filter(created_at__lt=now - RESEND_AFTER, created_at__gte=now - RESEND_WITHIN)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_LEASE))
    )
    requests = list(lost.values_list("pk", "user_id", "email"))
    if not dry_run:
        for request_id, user_id, email in requests:
            logger.warning("password reset %s: not sent after %s, sending it again", request_id, RESEND_AFTER)
            with transaction.atomic():  # through the outbox: a broker outage loses nothing here either
                PasswordResetRequest.objects.filter(pk=request_id).update(resends=F("resends") + 1)
                # A request made by address is sent by address: to every account that has it.
                outbox.send(send_password_reset_email, None if email else user_id, request_id)
    return [request_id for request_id, _, _ in requests]
    # --8<-- [end:resend-lost-resets]


# --8<-- [start:prune-password-resets]
PRUNE_BATCH_SIZE = 10_000


@shared_task
def prune_password_resets(dry_run: bool = False) -> int:
    """Delete reset requests older than PASSWORD_RESET_RETENTION_DAYS (beat, nightly, on "low"); returns how many.

    Every row holds an address someone typed, an account's or not: it is kept
    while it helps to answer "did my email go out?", then deleted. By then nothing
    would send it again (RESEND_WITHIN), and the link in the email never needed
    it: its token is made from the account's state. Deleted in batches, each its
    own short transaction, so a first run over years of rows holds no long lock.
    """
    cutoff = timezone.now() - timedelta(days=settings.PASSWORD_RESET_RETENTION_DAYS)
    old = PasswordResetRequest.objects.filter(created_at__lt=cutoff)
    if dry_run:
        return old.count()
    deleted = delete_in_batches(old, PRUNE_BATCH_SIZE)
    logger.info("password resets: deleted %s requests made before %s", deleted, cutoff)
    return deleted
    # --8<-- [end:prune-password-resets]


def _send(user) -> None:
    path = reverse(
        "password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    context = {"user": user, "reset_url": f"{settings.SITE_URL}{path}"}
    send_mail(
        subject=render_to_string("users/password_reset_subject.txt", context).strip(),
        message=render_to_string("users/password_reset_email.txt", context),
        from_email=None,
        recipient_list=[user.email],
    )
