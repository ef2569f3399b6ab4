from django.core.management.base import BaseCommand, CommandError

from ...models import PoisonMessage


class Command(BaseCommand):
    help = "List the poison messages the workers could not run (unknown task, bad body), show or replay one."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", required=True)
        listing = commands.add_parser("list", help="one line per poison message, newest first")
        listing.add_argument("--reason", choices=PoisonMessage.Reason.values)
        listing.add_argument("--all", action="store_true", help="include messages already replayed")
        show = commands.add_parser("show", help="everything recorded about one message, with its body")
        show.add_argument("id", type=int)
        replay = commands.add_parser("replay", help="send unknown-task messages again, once the task is deployed")
        replay.add_argument("ids", nargs="+", type=int)

    def handle(self, *args, action, **options):
        if action == "list":
            return self.list(options["reason"], options["all"])
        if action == "show":
            return self.show(self.get(options["id"]))
        for pk in options["ids"]:
            poison = self.get(pk)
            try:
                poison.replay()
            except ValueError as error:
                raise CommandError(f"{pk}: {error}") from error
            self.stdout.write(f"{pk}\tsent again to {poison.queue}")

    def get(self, pk):
        try:
            return PoisonMessage.objects.get(pk=pk)
        except PoisonMessage.DoesNotExist:
            raise CommandError(f"no PoisonMessage with id {pk}") from None

    def list(self, reason, include_replayed):
        poison = PoisonMessage.objects.all()
        if reason:
            poison = poison.filter(reason=reason)
        if not include_replayed:
            poison = poison.filter(replayed_at__isnull=True)
        for row in poison:
            self.stdout.write(
                f"{row.pk}\t{row.first_seen_at:%Y-%m-%d %H:%M:%S}\t{row.reason}\tqueue={row.queue}\t"
                f"task={row.task_name or '-'}\tcontent_type={row.content_type or '-'}\t"
                f"{row.body_size} bytes\tx{row.deliveries}\t{row.exception_type}: {row.exception_message}"
            )

    def show(self, row):
        for field in PoisonMessage._meta.fields:
            if field.name != "body":
                self.stdout.write(f"{field.name}: {getattr(row, field.name)}")
        # Text as it came; bytes as base64 (``base64 -d`` gives them back).
        self.stdout.write(f"body ({row.body_encoding}):")
        self.stdout.write(row.body)
