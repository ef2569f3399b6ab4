"""Build every user's statement of a month: ``manage.py build_statements --month 2026-10 [--wait]``."""

import time
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from ...models import StatementRun


class Command(BaseCommand):
    help = "Build the monthly statements (a fan-out over batches of users), after commit."

    def add_arguments(self, parser):
        parser.add_argument("--month", required=True, help="YYYY-MM")
        parser.add_argument("--wait", action="store_true", help="block until the run has finished")

    def handle(self, *args, month, wait, **options):
        try:
            first_day = date.fromisoformat(f"{month}-01")
        except ValueError:
            raise CommandError(f"--month must look like 2026-10, not {month!r}") from None
        run, started = StatementRun.start(first_day)
        self.stdout.write(f"statements {month}: run {run.pk} {'started' if started else 'already running'}")
        while wait and run.status in StatementRun.ACTIVE:
            time.sleep(0.5)
            run.refresh_from_db()
        if wait:
            self.stdout.write(f"statements {month}: {run.status}, {run.lines} lines {run.error}".rstrip())
