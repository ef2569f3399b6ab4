from django.conf import settings
from django.db import models, transaction


class TransactionImport(models.Model):
    """A CSV of transactions a user uploaded, imported by a task after commit."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="transaction_imports")
    # The uploaded file, in the default storage (MEDIA_ROOT, or S3): the task
    # reads it from there, never from the request. Only the row's id travels.
    file = models.FileField(upload_to="imports/")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rows = models.PositiveIntegerField(default=0)
    # Why the import FAILED, with the line number, for the user.
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Import {self.pk} ({self.status})"

    # --8<-- [start:receive]
    @classmethod
    def receive(cls, user, uploaded_file) -> "TransactionImport":
        """Store the upload and dispatch its import, in one transaction (the outbox).

        Saving the row writes the file to storage first; the task is published
        only after COMMIT, so the worker always finds the row, and the row's file.
        """
        from .. import outbox
        from .tasks import process_transaction_import

        with transaction.atomic():
            upload = cls.objects.create(user=user, file=uploaded_file)
            outbox.send(process_transaction_import, upload.pk)
        return upload
        # --8<-- [end:receive]
