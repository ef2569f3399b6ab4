import logging

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

logger = logging.getLogger(__name__)


@shared_task(
    # Routed to "high" by config/topology.py; its pool kills it after 30 s.
    autoretry_for=(OSError,),  # SMTP connection problems are worth retrying
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=3,
)
def send_password_reset_email(user_id: int) -> str:
    """Email a password-reset link to user ``user_id``.

    Takes an id and re-reads the user: the row may have changed or gone since the
    request. A missing or inactive user is logged and the task ends (retrying
    would not make the user exist).
    """
    User = get_user_model()
    try:
        user = User.objects.get(pk=user_id, is_active=True)
    except User.DoesNotExist:
        logger.warning("password reset: no active user %s, nothing sent", user_id)
        return "skipped"

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
    logger.info("password reset email sent to user %s", user.pk)
    return "sent"
