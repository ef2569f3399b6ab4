from django.conf import settings
from django.db import models


class Transaction(models.Model):
    """The rows users export."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="transactions")
    created_at = models.DateTimeField(db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    description = models.CharField(max_length=255)

    class Meta:
        indexes = [models.Index(fields=["user", "id"], name="transaction_user_id_idx")]

    def __str__(self):
        return f"{self.amount} {self.currency} {self.description}"


class ExportJob(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="export_jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    # The checkpoint: rows written so far and the last primary key written.
    processed_rows = models.PositiveBigIntegerField(default=0)
    last_key = models.BigIntegerField(default=0)
    total_rows = models.PositiveBigIntegerField(null=True, blank=True)
    file = models.FileField(upload_to="exports/", blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"Export {self.pk} ({self.status})"
