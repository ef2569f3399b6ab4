import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from .... import outbox
from ...models import ExportJob
from ...tasks import generate_csv_export


class Command(BaseCommand):
    help = "Export a user's transactions to CSV on the export pool and print the job id."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username whose transactions to export")
        parser.add_argument("--wait", action="store_true", help="block until the export finishes")
        parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait with --wait")

    def handle(self, *args, user, wait, timeout, **options):
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"no user named {user!r}")
        with transaction.atomic():
            job = ExportJob.objects.create(user=owner)
            # Committed with the job, published after COMMIT (or by the outbox relay).
            outbox.send(generate_csv_export, job.pk)
        self.stdout.write(str(job.pk))
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while job.status not in (ExportJob.Status.COMPLETED, ExportJob.Status.FAILED):
            if time.monotonic() > deadline:
                raise CommandError(f"export {job.pk} did not finish within {timeout:.0f}s (status {job.status})")
            time.sleep(0.5)
            job.refresh_from_db()
        if job.status == ExportJob.Status.FAILED:
            raise CommandError(f"export {job.pk} failed: {job.error}")
        self.stderr.write(f"export {job.pk} completed: {job.processed_rows} rows in {job.file.name}")
