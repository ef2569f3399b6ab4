from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone


class TooManyExports(Exception):
    """The user already has EXPORT_MAX_RUNNING_PER_USER exports queued or running."""


# The days an export's range may name. Beyond them lies only nonsense that would
# fail in the task instead (the day after 9999-12-31 is not a Python date: an
# OverflowError, a dead letter and an alert for what the form could refuse).
EARLIEST_DAY, LATEST_DAY = date(1900, 1, 1), date(2999, 12, 31)
DAY_MESSAGE = f"Choose a day from {EARLIEST_DAY} to {LATEST_DAY}."
DAY_VALIDATORS = [MinValueValidator(EARLIEST_DAY, DAY_MESSAGE), MaxValueValidator(LATEST_DAY, DAY_MESSAGE)]


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
        CANCELLED = "cancelled", "Cancelled"

    # Queued or running: what the per-user limit counts and the watchdog watches.
    ACTIVE = (Status.PENDING, Status.RUNNING)

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
    # The export's parameters: transactions created on these days (inclusive;
    # empty means unbounded), in the site's time zone.
    date_from = models.DateField(null=True, blank=True, validators=DAY_VALIDATORS)
    date_to = models.DateField(null=True, blank=True, validators=DAY_VALIDATORS)
    # Why the job FAILED (or the last error a retry recovered from), for its page.
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

    def clean(self):
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValidationError("The first day must not be after the last day.")

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    # --8<-- [start:is-stalled]
    @property
    def is_stalled(self) -> bool:
        """RUNNING, but no runner holds a live lease: its worker was killed, hangs, or was stopped.

        Nobody is writing, so the ETA means nothing. The job is not lost: the
        watchdog (every minute) sends it again, or the requeued message comes
        back, and the next runner resumes from the checkpoint. A lease released
        with a future expiry (a retry on its way, see ``release``) is not a stall.
        """
        if self.status != self.Status.RUNNING:
            return False
        return self.lease_expires_at is None or self.lease_expires_at <= timezone.now()
        # --8<-- [end:is-stalled]

    def window(self) -> tuple[datetime | None, datetime | None]:
        """The date range as [start, end) instants, for the row queries."""

        def midnight(day: date) -> datetime:
            return timezone.make_aware(datetime.combine(day, time.min))

        start = midnight(self.date_from) if self.date_from else None
        end = midnight(self.date_to + timedelta(days=1)) if self.date_to else None
        return start, end

    # --8<-- [start:request]
    @classmethod
    def request(cls, user, date_from: date | None = None, date_to: date | None = None) -> tuple["ExportJob", bool]:
        """Create an export for ``user`` (dispatched after commit), unless one like it is already queued or running.

        Returns ``(job, created)``: the same request twice gives the job already
        under way, not a second one. Raises ``TooManyExports`` when the user has
        ``EXPORT_MAX_RUNNING_PER_USER`` exports queued or running, and Django's
        ``ValidationError`` for a range of days it cannot export (the form's rules).

        Count-then-insert is a race (two requests both count one and both insert);
        locking the user's row first makes concurrent requests of one user take
        turns, while other users' requests do not wait. (SQLite has no row locks,
        but it runs one write transaction at a time.)
        """
        from .. import outbox
        from .tasks import generate_csv_export

        job = cls(user=user, date_from=date_from, date_to=date_to)
        job.full_clean()  # what the form checks, for every other caller (the command, your code)
        with transaction.atomic():
            get_user_model().objects.select_for_update().filter(pk=user.pk).first()
            active = cls.objects.filter(user=user, status__in=cls.ACTIVE)
            same = active.filter(date_from=date_from, date_to=date_to).order_by("created_at").first()
            if same is not None:
                return same, False
            limit = settings.EXPORT_MAX_RUNNING_PER_USER
            if active.count() >= limit:
                raise TooManyExports(
                    f"you already have {limit} export{'s' if limit != 1 else ''} running; "
                    "wait for one to finish or cancel one"
                )
            job.save()
            # Committed with the job (transactional outbox): published after COMMIT,
            # or by the outbox relay once the broker is back. The worker always finds the job.
            outbox.send(generate_csv_export, job.pk)
        return job, True
        # --8<-- [end:request]

    # --8<-- [start:cancel]
    @classmethod
    def cancel(cls, pk: int, user=None) -> bool:
        """Mark the (user's) queued or running export CANCELLED (one UPDATE); False if it had already ended.

        The runner notices at its next checkpoint, which is conditional on the
        job still being active, stops and cleans up its parts. Without ``user``:
        an operator's cancel (a revoked task, ``tasks.cancel_revoked_export``).
        """
        jobs = cls.objects.filter(pk=pk, status__in=cls.ACTIVE)
        if user is not None:
            jobs = jobs.filter(user=user)
        return bool(jobs.update(status=cls.Status.CANCELLED, finished_at=timezone.now()))
        # --8<-- [end:cancel]

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
            cls.objects.filter(free, pk=pk, status__in=cls.ACTIVE).update(
                lease_owner=owner, lease_expires_at=now + cls.lease_duration(), heartbeat_at=now
            )
        )

    @classmethod
    def release(cls, pk: int, owner: str, hold: timedelta | None = None) -> bool:
        """Give the lease up; False if ``owner`` no longer held it. With ``hold``, any
        runner may claim the job, but the watchdog leaves it alone that long (a retry
        is on its way)."""
        expires = timezone.now() + hold if hold else None
        return bool(cls.objects.filter(pk=pk, lease_owner=owner).update(lease_owner="", lease_expires_at=expires))

    @classmethod
    def stale(cls):
        """Unfinished jobs whose runner stopped renewing its lease (or never started).

        FAILED and CANCELLED jobs are finished: the watchdog never sends them again.
        """
        now = timezone.now()
        unfinished = cls.objects.filter(status__in=cls.ACTIVE)
        unowned = Q(lease_owner="", lease_expires_at__isnull=True, created_at__lt=now - cls.lease_duration())
        return unfinished.filter(Q(lease_expires_at__lt=now) | unowned)

    @classmethod
    def abandoned(cls):
        """Ended jobs still leased by a runner that stopped renewing: it died before it noticed the end.

        A user cancels a running export, and its worker is killed before the next
        checkpoint: the job is CANCELLED but keeps the dead runner's lease.
        """
        ended = cls.objects.exclude(status__in=cls.ACTIVE).exclude(lease_owner="")
        return ended.filter(lease_expires_at__lt=timezone.now())
        # --8<-- [end:lease]

    @classmethod
    def mark_failed(cls, pk: int, reason: str) -> bool:
        """FAILED, with the reason, unless the job already ended; True if this call failed it."""
        return bool(
            cls.objects.filter(pk=pk, status__in=cls.ACTIVE).update(
                status=cls.Status.FAILED,
                error=reason,
                finished_at=timezone.now(),
                lease_owner="",
                lease_expires_at=None,
            )
        )

    @property
    def progress(self) -> float:
        return min(self.processed_rows / self.total_rows, 1.0) if self.total_rows else 0.0
