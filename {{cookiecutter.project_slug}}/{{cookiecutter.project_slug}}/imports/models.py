from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models, transaction


class TooManyImports(Exception):
    """The user already has IMPORT_MAX_PENDING_PER_USER imports waiting or running."""


class TransactionImport(models.Model):
    """A CSV of transactions a user uploaded, imported by a task after commit."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="transaction_imports")
    # The uploaded file, in the default storage (MEDIA_ROOT, or S3): the task
    # reads it from there, never from the request. Only the row's id travels.
    # Deleted (and emptied here) once the import has run, whatever its outcome.
    file = models.FileField(upload_to="imports/", blank=True)
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
        Raises ``TooManyImports``, before anything is stored, when the user has
        ``IMPORT_MAX_PENDING_PER_USER`` imports waiting or running: counted under
        a lock on the user's row, so that two uploads at once cannot both pass.
        """
        from .. import outbox
        from .tasks import process_transaction_import

        with transaction.atomic():
            get_user_model().objects.select_for_update().filter(pk=user.pk).first()
            limit = settings.IMPORT_MAX_PENDING_PER_USER
            if cls.objects.filter(user=user, status=cls.Status.PENDING).count() >= limit:
                raise TooManyImports(
                    f"you already have {limit} import{'s' if limit != 1 else ''} waiting to run; "
                    "upload this file once one has finished"
                )
            upload = cls.objects.create(user=user, file=uploaded_file)
            outbox.send(process_transaction_import, upload.pk)
        return upload
        # --8<-- [end:receive]
