import time
from datetime import date

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ...models import ExportJob, TooManyExports


def day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {text!r}") from None


class Command(BaseCommand):
    help = "Export a user's transactions to CSV on the export pool and print the job id."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username whose transactions to export")
        parser.add_argument("--from", dest="date_from", help="first day (YYYY-MM-DD) of transactions to export")
        parser.add_argument("--to", dest="date_to", help="last day (YYYY-MM-DD) of transactions to export")
        parser.add_argument("--wait", action="store_true", help="block until the export finishes")
        parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait with --wait")

    def handle(self, *args, user, date_from, date_to, wait, timeout, **options):
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"no user named {user!r}")
        date_from, date_to = (day(value) if value else None for value in (date_from, date_to))
        try:
            # The same rules as the web page: the days it accepts, a per-user limit,
            # and the export already under way with the same parameters is reused.
            job, created = ExportJob.request(owner, date_from=date_from, date_to=date_to)
        except ValidationError as refusal:
            raise CommandError(f"export refused for {user!r}: {' '.join(refusal.messages)}") from None
        except TooManyExports as refusal:
            raise CommandError(f"export refused for {user!r}: {refusal}") from None
        if not created:
            self.stderr.write(f"export {job.pk} with these parameters is already {job.status}: reusing it")
        self.stdout.write(str(job.pk))
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while job.is_active:
            if time.monotonic() > deadline:
                raise CommandError(f"export {job.pk} did not finish within {timeout:.0f}s (status {job.status})")
            time.sleep(0.5)
            job.refresh_from_db()
        if job.status == ExportJob.Status.FAILED:
            raise CommandError(f"export {job.pk} failed: {job.error}")
        if job.status == ExportJob.Status.CANCELLED:
            raise CommandError(f"export {job.pk} was cancelled")
        self.stderr.write(f"export {job.pk} completed: {job.processed_rows} rows in {job.file.name}")
