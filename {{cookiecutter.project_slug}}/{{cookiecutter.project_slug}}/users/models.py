from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The project's user. A custom model from day one keeps later changes cheap."""


class PasswordResetRequest(models.Model):
    """One "forgot my password" submission: its email is sent once, even if the task runs twice.

    The reset form writes the address that was typed, known or not, and the task
    finds its account (users/forms.py). Rows are deleted PASSWORD_RESET_RETENTION_DAYS
    after they were made (``prune_password_resets``).
    """

    # The address asked for; empty for a request made for a user directly.
    email = models.EmailField(blank=True)
    # The account emailed (the first, if several share the address); empty until the
    # task has looked, and for an address no account has.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="password_resets"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # A worker claimed the sending (a short lease), and when it finished: the email
    # sent, or no account found for the address.
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Times ``resend_lost_password_resets`` sent it again (its message was lost).
    resends = models.PositiveSmallIntegerField(default=0)

    def __str__(self):
        return f"password reset {self.pk} for {f'user {self.user_id}' if self.user_id else 'an address'}"
