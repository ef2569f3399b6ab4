from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The project's user. A custom model from day one keeps later changes cheap."""


class PasswordResetRequest(models.Model):
    """One "forgot my password" submission: its email is sent once, even if the task runs twice."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="password_resets")
    created_at = models.DateTimeField(auto_now_add=True)
    # A worker claimed the sending (a short lease), and when it finished.
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Times ``resend_lost_password_resets`` sent it again (its message was lost).
    resends = models.PositiveSmallIntegerField(default=0)

    def __str__(self):
        return f"password reset {self.pk} for user {self.user_id}"
