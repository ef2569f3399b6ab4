"""The cron alternative: run any beat entry by name, now, in this process.

    python manage.py scheduled list
    python manage.py scheduled run export-watchdog --dry-run

Each entry of CELERY_BEAT_SCHEDULE is a task that accepts ``dry_run``; with cron
instead of beat, one crontab line per entry does the same job (docs/beat.md).
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.celery_app import app


class Command(BaseCommand):
    help = "List the beat schedule, or run one entry now (the cron alternative to beat)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="show every entry, its task, schedule and queue")
        run = actions.add_parser("run", help="run one entry now, in this process")
        run.add_argument("name", help="the entry's name, e.g. export-watchdog")
        run.add_argument("--dry-run", action="store_true", help="report what it would do, change nothing")

    def handle(self, *args, action, **options):
        schedule = settings.CELERY_BEAT_SCHEDULE
        if action == "list":
            for name, entry in schedule.items():
                self.stdout.write(f"{name}\t{entry['task']}\t{entry['schedule']}\tqueue={entry['options']['queue']}")
            return
        name = options["name"]
        if name not in schedule:
            raise CommandError(f"no beat entry {name!r}; known: {', '.join(schedule)}")
        app.autodiscover_tasks(force=True)
        task = app.tasks[schedule[name]["task"]]
        result = task.apply(kwargs={"dry_run": options["dry_run"]}, throw=True).get()
        verb = "would act on" if options["dry_run"] else "acted on"
        self.stdout.write(f"{name}: {verb} {result}")
