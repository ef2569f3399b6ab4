from django.contrib.auth.forms import PasswordResetForm
from django.db import transaction

from .. import outbox
from .models import PasswordResetRequest
from .tasks import send_password_reset_email


# --8<-- [start:queued-reset-form]
class QueuedPasswordResetForm(PasswordResetForm):
    """Django's password reset form, with the email sent by a worker on ``high``.

    The request returns at once, even with the broker down; the email goes out on
    the fast pool, so a long export can never hold it up.
    """

    def send_mail(self, subject_template_name, email_template_name, context, from_email, to_email, **kwargs):
        user = context["user"]
        # Pass ids, not objects: arguments must be JSON, and the task re-reads
        # fresh state. The request row and its message commit together and the
        # message is published after COMMIT, or by the outbox relay if the broker
        # is down: the user gets the email either way (docs/outbox.md).
        with transaction.atomic():
            reset = PasswordResetRequest.objects.create(user=user)
            outbox.send(send_password_reset_email, user.pk, reset.pk)
        # --8<-- [end:queued-reset-form]
