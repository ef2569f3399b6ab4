from django.contrib.auth.forms import PasswordResetForm

from .models import PasswordResetRequest
from .tasks import send_password_reset_email


# --8<-- [start:queued-reset-form]
class QueuedPasswordResetForm(PasswordResetForm):
    """Django's password reset form, with the email sent by a worker on ``high``.

    The request returns at once; the email goes out on the fast pool, so a long
    export can never hold it up.
    """

    def send_mail(self, subject_template_name, email_template_name, context, from_email, to_email, **kwargs):
        user = context["user"]
        reset = PasswordResetRequest.objects.create(user=user)
        # Pass ids, not objects: arguments must be JSON, and the task re-reads
        # fresh state. delay_on_commit sends only once the surrounding
        # transaction (if any) has committed, so the worker never misses a row.
        send_password_reset_email.delay_on_commit(user.pk, reset.pk)
        # --8<-- [end:queued-reset-form]
