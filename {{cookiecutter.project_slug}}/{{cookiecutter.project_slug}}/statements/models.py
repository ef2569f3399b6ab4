from datetime import date, datetime, time

from django.conf import settings
from django.db import models, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone


class StatementRun(models.Model):
    """Every user's monthly statement, built by a fan-out: one task per batch of users."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        # Some batches failed: their users have no statement yet, every other user has one.
        PARTIAL = "partial", "Partly completed"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.PENDING, Status.RUNNING)
    # Ended with batches missing: replaying a failed batch's dead letter can still complete it.
    INCOMPLETE = (Status.PARTIAL, Status.FAILED)

    # The first day of the month; one run per month, rebuilt in place when run again.
    month = models.DateField(unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # The fan-out: how many batch tasks the chord's header holds; lines the batches wrote.
    batches = models.PositiveIntegerField(default=0)
    lines = models.PositiveIntegerField(default=0)
    # Which batches failed (PARTIAL or FAILED), and the chord's error.
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

    # --8<-- [start:settle]
    @classmethod
    def settle(cls, pk: int, ending: tuple[str, ...], reason: str = "") -> str | None:
        """End the run from its batches' outcomes, if its status is in ``ending``; returns the status it ended in.

        Called once every batch task has reported: by the chord's callback or
        errback (``ending=(RUNNING,)``), and again by a failed batch that was
        replayed (``ending=INCOMPLETE``). A batch that has not written its lines
        by then has failed. COMPLETED when every batch wrote its lines, PARTIAL
        when some did, FAILED when none did; ``reason``, the chord's error, goes
        on the run's page with the failed batches' users. The run's row is locked
        throughout: a rebuild of the month (``start``) waits, and finds it ended.
        """
        batches = StatementBatch.objects.filter(run_id=pk)
        done = Q(status=StatementBatch.Status.COMPLETED)
        with transaction.atomic():
            if not cls.objects.select_for_update().filter(pk=pk, status__in=ending).exists():
                return None
            batches.exclude(done).update(status=StatementBatch.Status.FAILED)
            counts = batches.aggregate(all=Count("pk"), done=Count("pk", filter=done), lines=Sum("lines", filter=done))
            failed = [
                f"users {first}-{last}"
                for first, last in batches.exclude(done).values_list("first_user_id", "last_user_id")
            ]
            status, error = cls.Status.COMPLETED, ""
            if failed:
                status = cls.Status.PARTIAL if counts["done"] else cls.Status.FAILED
                error = (
                    f"{len(failed)} of {counts['all']} batches failed ({', '.join(failed)}): those users have no "
                    f"statement yet. Each failed batch left a dead letter: replay it once the cause is fixed. {reason}"
                )
            cls.objects.filter(pk=pk).update(
                status=status, lines=counts["lines"] or 0, error=error.strip()[:2000], finished_at=timezone.now()
            )
        return status
        # --8<-- [end:settle]


class StatementBatch(models.Model):
    """One batch task of a run: a range of user ids, and whether their lines are written.

    What lets one batch fail without the others: the run ends from these rows,
    COMPLETED or PARTIAL, naming the batches (and so the users) that failed.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    run = models.ForeignKey(StatementRun, on_delete=models.CASCADE, related_name="statement_batches")
    first_user_id = models.PositiveBigIntegerField()
    last_user_id = models.PositiveBigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    lines = models.PositiveIntegerField(default=0)
    # Why it failed (the batch task's error), for the admin; the dead letter has the traceback.
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "first_user_id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "first_user_id"], name="statement_batch_unique"),
        ]

    def __str__(self):
        return f"{self.run} users {self.first_user_id}-{self.last_user_id} ({self.status})"


class StatementLine(models.Model):
    """One user's total in one currency for the run's month."""

    run = models.ForeignKey(StatementRun, on_delete=models.CASCADE, related_name="statement_lines")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="statement_lines")
    currency = models.CharField(max_length=3)
    # The sum of every transaction the line counts, whatever their amounts: as many
    # as ``count`` can count (2,147,483,647) of the largest amount a Transaction
    # holds (9,999,999,999.99) need 20 digits before the point. Anything smaller
    # let one user's import (150 of the largest amounts) overflow the line, fail
    # its batch, and with it the statements of every user in that batch.
    # test_statements.py::test_a_line_holds_the_total_of_as_many_transactions_as_it_counts
    total = models.DecimalField(max_digits=22, decimal_places=2)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "user", "currency"], name="statement_line_unique"),
        ]

    def __str__(self):
        return f"{self.user_id} {self.total} {self.currency}"
