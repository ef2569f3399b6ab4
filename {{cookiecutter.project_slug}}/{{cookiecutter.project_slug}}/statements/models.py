from datetime import date, datetime, time

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class StatementRun(models.Model):
    """Every user's monthly statement, built by a fan-out: one task per batch of users."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.PENDING, Status.RUNNING)

    # The first day of the month; one run per month, rebuilt in place when run again.
    month = models.DateField(unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # The fan-out: how many batch tasks the chord's header holds; lines the callback counted.
    batches = models.PositiveIntegerField(default=0)
    lines = models.PositiveIntegerField(default=0)
    # Why the run FAILED: the chord's error, naming the batch task that failed.
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-month"]

    def __str__(self):
        return f"Statements {self.month:%Y-%m} ({self.status})"

    def window(self) -> tuple[datetime, datetime]:
        """The month as [start, end) instants in the site's time zone."""
        following = date(self.month.year + self.month.month // 12, self.month.month % 12 + 1, 1)
        return tuple(timezone.make_aware(datetime.combine(day, time.min)) for day in (self.month, following))

    # --8<-- [start:start]
    @classmethod
    def start(cls, month: date) -> tuple["StatementRun", bool]:
        """Build the statements of ``month``, dispatched after commit; ``(run, started)``.

        A run already under way is returned as it is. A finished one (completed,
        or failed and since fixed) is built again from scratch: every batch task
        replaces its own lines, so running a month twice gives the same statements.
        """
        from .. import outbox
        from .tasks import start_statement_run

        with transaction.atomic():
            run, created = cls.objects.select_for_update().get_or_create(month=month.replace(day=1))
            if run.status in cls.ACTIVE and not created:
                return run, False
            cls.objects.filter(pk=run.pk).update(status=cls.Status.PENDING, error="", finished_at=None)
            outbox.send(start_statement_run, run.pk)
        run.refresh_from_db()
        return run, True
        # --8<-- [end:start]


class StatementLine(models.Model):
    """One user's total in one currency for the run's month."""

    run = models.ForeignKey(StatementRun, on_delete=models.CASCADE, related_name="statement_lines")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="statement_lines")
    currency = models.CharField(max_length=3)
    # Room for a hundred of the largest transactions (Transaction.amount has ten
    # digits before the point); a larger total is refused by the database.
    total = models.DecimalField(max_digits=14, decimal_places=2)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "user", "currency"], name="statement_line_unique"),
        ]

    def __str__(self):
        return f"{self.user_id} {self.total} {self.currency}"
