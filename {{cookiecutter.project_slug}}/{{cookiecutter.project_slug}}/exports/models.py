from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Transaction(models.Model):
    """The rows users export."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="transactions")
    created_at = models.DateTimeField(db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    description = models.CharField(max_length=255)

    class Meta:
        # Keyset batches read "WHERE user_id = ? AND id > ? ORDER BY id": this index
        # answers them without scanning or sorting.
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
    # The checkpoint, committed after every batch: rows and bytes written, the
    # last primary key written, and the part files (in storage) that hold them.
    processed_rows = models.PositiveBigIntegerField(default=0)
    bytes_written = models.PositiveBigIntegerField(default=0)
    last_key = models.BigIntegerField(default=0)
    parts = models.JSONField(default=list, blank=True)
    total_rows = models.PositiveBigIntegerField(null=True, blank=True)
    file = models.FileField(upload_to="exports/", blank=True)
    error = models.TextField(blank=True)
    # The lease: only the runner holding an unexpired lease may write. It is
    # renewed with every checkpoint, so an expired lease means a dead runner.
    lease_owner = models.CharField(max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Export {self.pk} ({self.status})"

    @staticmethod
    def lease_duration() -> timedelta:
        return timedelta(seconds=settings.EXPORT_LEASE_SECONDS)

    # --8<-- [start:lease]
    @classmethod
    def claim(cls, pk: int, owner: str) -> bool:
        """Take the lease of an unfinished job unless a live runner holds it (one UPDATE)."""
        now = timezone.now()
        free = Q(lease_owner="") | Q(lease_expires_at__lt=now) | Q(lease_owner=owner)
        return bool(
            cls.objects.filter(free, pk=pk, status__in=[cls.Status.PENDING, cls.Status.RUNNING]).update(
                lease_owner=owner, lease_expires_at=now + cls.lease_duration(), heartbeat_at=now
            )
        )

    @classmethod
    def release(cls, pk: int, owner: str) -> None:
        cls.objects.filter(pk=pk, lease_owner=owner).update(lease_owner="", lease_expires_at=None)

    @classmethod
    def stale(cls):
        """Unfinished jobs whose runner stopped renewing its lease (or never started)."""
        now = timezone.now()
        unfinished = cls.objects.filter(status__in=[cls.Status.PENDING, cls.Status.RUNNING])
        return unfinished.filter(
            Q(lease_expires_at__lt=now) | Q(lease_owner="", created_at__lt=now - cls.lease_duration())
        )
        # --8<-- [end:lease]

    @property
    def progress(self) -> float:
        return min(self.processed_rows / self.total_rows, 1.0) if self.total_rows else 0.0
