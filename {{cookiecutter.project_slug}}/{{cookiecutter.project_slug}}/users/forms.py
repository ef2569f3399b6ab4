from django.contrib.auth.forms import PasswordResetForm

from .tasks import send_password_reset_email


class QueuedPasswordResetForm(PasswordResetForm):
    """Django's password reset form, with the email sent by a worker on ``high``.

    The request returns at once; the email goes out on the fast pool, so a long
    export can never hold it up.
    """

    def send_mail(self, subject_template_name, email_template_name, context, from_email, to_email, **kwargs):
        # Pass the id, not the user: arguments must be JSON, and the task re-reads
        # fresh state. ``delay_on_commit`` sends only once the surrounding
        # transaction (if any) has committed, so the worker never misses a row.
        send_password_reset_email.delay_on_commit(context["user"].pk)
