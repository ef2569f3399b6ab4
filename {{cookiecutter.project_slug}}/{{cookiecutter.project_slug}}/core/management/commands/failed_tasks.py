from django.core.management.base import BaseCommand, CommandError

from ...models import FailedTask


class Command(BaseCommand):
    help = "List the dead-letter records of tasks that failed for good, or replay them."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", required=True)
        listing = commands.add_parser("list", help="show failed tasks, newest first")
        listing.add_argument("--task", help="only this task name (or a suffix of it)")
        listing.add_argument("--all", action="store_true", help="include tasks already replayed")
        replay = commands.add_parser("replay", help="send failed tasks again")
        replay.add_argument("ids", nargs="*", type=int, help="FailedTask ids")
        replay.add_argument("--all", action="store_true", help="every failed task not replayed yet")

    def handle(self, *args, action, **options):
        if action == "list":
            return self.list(options["task"], options["all"])
        return self.replay(options["ids"], options["all"])

    def list(self, task, include_replayed):
        failed = FailedTask.objects.all()
        if task:
            failed = failed.filter(task_name__endswith=task)
        if not include_replayed:
            failed = failed.filter(replayed_at__isnull=True)
        for row in failed:
            failure = f" (failure {row.failure})" if row.failure > 1 else ""
            cut = f" (cut: {row.arguments_size} bytes in all, not replayable)" if row.arguments_truncated else ""
            self.stdout.write(
                f"{row.pk}\t{row.failed_at:%Y-%m-%d %H:%M:%S}\t{row.task_name}\tid={row.task_id}{failure}\t"
                f"args={row.args} kwargs={row.kwargs}{cut}\t{row.exception_type}: {row.exception_message}"
            )

    def replay(self, ids, everything):
        if not ids and not everything:
            raise CommandError("name FailedTask ids to replay, or --all")
        failed = FailedTask.objects.filter(replayed_at__isnull=True)
        if not everything:
            failed = FailedTask.objects.filter(pk__in=ids)
        missing = set(ids) - set(failed.values_list("pk", flat=True))
        if missing:
            raise CommandError(f"no FailedTask with id {', '.join(map(str, sorted(missing)))}")
        refused = []
        for row in failed:
            try:
                self.stdout.write(f"{row.pk}\t{row.task_name}\treplayed as {row.replay()}")
            except ValueError as error:  # its arguments were cut: a replay would send others
                refused.append(f"{row.pk}: {error}")
        if refused:
            raise CommandError("not replayed:\n" + "\n".join(refused))
