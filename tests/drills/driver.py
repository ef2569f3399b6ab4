"""The drills' hands inside the baked project: dispatch work, report state, as JSON.

Copied into the root of the baked project and run there with the same environment
as its worker pools (``python drill_driver.py <command> ...``). It only uses what a
user's own code would: the models, the tasks, ``.delay()``. Every command prints
one JSON document on stdout.

It finds the apps by label (``payments``, ``exports``, ``users``, ``core``), so it
works whatever the project is called.
"""

import argparse
import importlib
import json
import os
import pickle
import sys
import time
import uuid
from pathlib import Path

import django
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.urls import reverse

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()

Order = apps.get_model("payments", "Order")
SandboxCharge = apps.get_model("payments", "SandboxCharge")
ExportJob = apps.get_model("exports", "ExportJob")
Transaction = apps.get_model("exports", "Transaction")
PasswordResetRequest = apps.get_model("users", "PasswordResetRequest")
FailedTask = apps.get_model("core", "FailedTask")
PoisonMessage = apps.get_model("core", "PoisonMessage")
OutboxMessage = apps.get_model("outbox", "OutboxMessage")


def module(label: str, name: str):
    """``module("payments", "tasks")`` is ``<project>.payments.tasks``."""
    return importlib.import_module(f"{apps.get_app_config(label).name}.{name}")


def demo_user():
    return get_user_model().objects.get(username="demo")


def orders(args) -> dict:
    """Create unpaid orders for ``demo``; script the sandbox provider for each of them."""
    provider = module("payments", "providers").SandboxProvider()
    created = []
    for index in range(args.count):
        order = Order.objects.create(user=demo_user(), amount_cents=1000 + index)
        if args.plan:
            provider.plan(str(order.idempotency_key), *args.plan)
        created.append(order.pk)
    return {"orders": created}


def pay(args) -> dict:
    process_payment = module("payments", "tasks").process_payment
    return {"tasks": [process_payment.delay(order_id).id for order_id in args.order_ids]}


def resets(args) -> dict:
    """One new user and one "forgot my password" request each, dispatched like the view does."""
    send = module("users", "tasks").send_password_reset_email
    created = []
    for _ in range(args.count):
        name = f"drill-{uuid.uuid4().hex[:12]}"
        user = get_user_model().objects.create_user(name, f"{name}@example.com", "pw")
        request = PasswordResetRequest.objects.create(user=user)
        send.delay(user.pk, request.pk)
        created.append({"user": user.pk, "request": request.pk})
    return {"resets": created}


# Messages no worker can run, as a broken or out-of-date producer would send them:
# (reason the worker must record, content type, content encoding, body).
POISON_KINDS = [
    ("unknown_task", "application/json", "utf-8", json.dumps([[1], {}, {}]).encode()),
    ("decode_error", "application/json", "utf-8", b"{'not': json"),
    ("content_disallowed", "application/x-python-serialize", "binary", pickle.dumps(((1,), {}, {}))),
]


def publish_poison(producer, count: int) -> list[dict]:
    """``count`` poison messages, each kind in turn, onto "high" and "default" in turn."""
    from config.celery_app import app

    known = module("payments", "tasks").process_payment.name
    sent = []
    for index in range(count):
        reason, content_type, encoding, body = POISON_KINDS[index % len(POISON_KINDS)]
        queue = app.amqp.queues[("high", "default")[index % 2]]
        task_id = str(uuid.uuid4())
        name = "drills.tasks.never_deployed" if reason == "unknown_task" else known
        producer.publish(
            body + task_id.encode(),  # every message different
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            headers={"lang": "py", "task": name, "id": task_id, "root_id": task_id},
            content_type=content_type,
            content_encoding=encoding,
        )
        sent.append({"id": task_id, "reason": reason, "queue": queue.name})
    return sent


def poison(args) -> dict:
    from config.celery_app import app

    with app.producer_or_acquire() as producer:
        return {"poison": publish_poison(producer, args.count)}


def poison_burst(args) -> dict:
    """For each order: ``--per-order`` poison messages, then the order's payment."""
    from config.celery_app import app

    process_payment = module("payments", "tasks").process_payment
    sent, tasks = [], []
    with app.producer_or_acquire() as producer:
        for order_id in args.order_ids:
            sent += publish_poison(producer, args.per_order)
            tasks.append(process_payment.delay(order_id).id)
    return {"poison": sent, "tasks": tasks}


def export(args) -> dict:
    job = ExportJob.objects.create(user=demo_user())
    if args.poison:
        # A file where the job's part directory must go: storage refuses every
        # part of this job, on every attempt, like a broken volume.
        Path(default_storage.path(f"exports/{job.pk}")).parent.mkdir(parents=True, exist_ok=True)
        Path(default_storage.path(f"exports/{job.pk}")).write_text("not a directory")
    result = module("exports", "tasks").generate_csv_export.delay(job.pk)
    return {"job": job.pk, "task": result.id}


def cancel(args) -> dict:
    """Cancel exports as their owner does: a POST to the export page's Cancel button."""
    client, statuses = Client(), {}
    for job in ExportJob.objects.filter(pk__in=args.job_ids):
        client.force_login(job.user)
        statuses[job.pk] = client.post(reverse("exports:cancel", args=[job.pk])).status_code
    return {"cancelled": statuses}


def submit(args) -> dict:
    """Checkouts, "forgot my password" requests and export requests through the real views.

    What a browser does, through the whole request stack (middleware, views, the
    outbox), in this process. Returns what was created and each response's status
    and time in seconds.
    """
    client = Client()
    client.force_login(demo_user())
    answers, resets = [], []

    def post(kind, path, data=None):
        started = time.monotonic()
        response = client.post(path, data or {})
        answers.append({"kind": kind, "status": response.status_code, "seconds": time.monotonic() - started})

    known_orders = set(Order.objects.values_list("pk", flat=True))
    known_jobs = set(ExportJob.objects.values_list("pk", flat=True))
    for _ in range(args.checkouts):
        post(
            "checkout",
            reverse("payments:checkout"),
            # One submission per checkout: a fresh key, as a freshly rendered form carries.
            {"amount_cents": 2500, "currency": "EUR", "payment_method": "pm_card_visa", "submission_key": uuid.uuid4()},
        )
    for _ in range(args.resets):
        name = f"drill-{uuid.uuid4().hex[:12]}"
        user = get_user_model().objects.create_user(name, f"{name}@example.com", "pw")
        post("password reset", reverse("password_reset"), {"email": user.email})
        resets.append({"user": user.pk, "request": PasswordResetRequest.objects.get(user=user).pk})
    for _ in range(args.exports):
        post("export", reverse("exports:start"))
    return {
        "answers": answers,
        "orders": sorted(set(Order.objects.values_list("pk", flat=True)) - known_orders),
        "resets": resets,
        "jobs": sorted(set(ExportJob.objects.values_list("pk", flat=True)) - known_jobs),
    }


def watchdog(args) -> dict:
    """Run the export watchdog through the broker, as beat does every minute."""
    stale = module("exports", "tasks").export_watchdog.delay().get(timeout=60)
    return {"redispatched": stale}


def reference(args) -> dict:
    """The demo user's transactions as one plain COPY: what every export must equal, byte for byte.

    Independent of the export engine's batches, parts and checkpoints: the header,
    then every row formatted by Postgres in a single statement.
    """
    csv_export = module("exports", "csv_export")
    user = demo_user()
    last = Transaction.objects.filter(user=user).order_by("-pk").values_list("pk", flat=True).first() or 0
    sql = "COPY (" + csv_export.COPY_SELECT.format(table=Transaction._meta.db_table) + ") TO STDOUT (FORMAT csv)"
    path = Path(settings.MEDIA_ROOT) / "drills" / "reference.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out, connection.cursor() as cursor, cursor.cursor.copy(sql, [user.pk, 0, last]) as copy:
        out.write(csv_export.HEADER_LINE)
        for block in copy:
            out.write(block)
    return {"path": str(path), "rows": Transaction.objects.filter(user=user).count()}


def part_files(job) -> list[str]:
    """What is on disk in the job's part directory (its parts while it runs; nothing once it ended)."""
    directory = Path(default_storage.path(f"exports/{job.pk}"))
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []


def state(args) -> dict:
    """Everything the drills assert on, read from the database."""
    charges: dict[str, int] = {}
    for key in SandboxCharge.objects.values_list("idempotency_key", flat=True):
        charges[key] = charges.get(key, 0) + 1
    return {
        "orders": {
            order.pk: {
                "status": order.status,
                "key": str(order.idempotency_key),
                "charge_id": order.charge_id,
                "attempts": order.payment_attempts,
            }
            for order in Order.objects.all()
        },
        "ledger": {row.idempotency_key: row.charge_id for row in SandboxCharge.objects.all()},
        "charges_per_key": charges,
        "exports": {
            job.pk: {
                "status": job.status,
                "processed_rows": job.processed_rows,
                "total_rows": job.total_rows,
                "parts": job.parts,
                "file": default_storage.path(job.file.name) if job.file else None,
                "lease_owner": job.lease_owner,
                "error": job.error,
                "part_files": part_files(job),
            }
            for job in ExportJob.objects.all()
        },
        "resets": {
            request.pk: {"user": request.user_id, "sent": request.sent_at is not None}
            for request in PasswordResetRequest.objects.all()
        },
        "poison_messages": [
            {"id": row.task_id, "reason": row.reason, "queue": row.queue, "deliveries": row.deliveries}
            for row in PoisonMessage.objects.all()
        ],
        "outbox": {
            "unsent": OutboxMessage.objects.filter(sent_at__isnull=True).count(),
            "task_ids": [str(task_id) for task_id in OutboxMessage.objects.values_list("task_id", flat=True)],
        },
        "failed_tasks": [
            {"task": failed.task_name, "args": failed.args, "exception": failed.exception_type}
            for failed in FailedTask.objects.all()
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("orders", help="create orders (and script the sandbox provider)")
    command.add_argument("count", type=int)
    command.add_argument("--plan", nargs="*", default=[], help="sandbox behaviours, e.g. slow:1 hang_after_charge:30")
    command.set_defaults(run=orders)
    command = commands.add_parser("pay", help="dispatch process_payment for each order")
    command.add_argument("order_ids", type=int, nargs="+")
    command.set_defaults(run=pay)
    command = commands.add_parser("resets", help="create users and dispatch one password reset each")
    command.add_argument("count", type=int)
    command.set_defaults(run=resets)
    command = commands.add_parser("poison-burst", help="poison messages interleaved with payments")
    command.add_argument("order_ids", type=int, nargs="+")
    command.add_argument("--per-order", type=int, default=3)
    command.set_defaults(run=poison_burst)
    command = commands.add_parser("poison", help="poison messages only (no database needed)")
    command.add_argument("count", type=int)
    command.set_defaults(run=poison)
    command = commands.add_parser("export", help="create and dispatch an export of demo's transactions")
    command.add_argument("--poison", action="store_true", help="make storage refuse every part of it")
    command.set_defaults(run=export)
    command = commands.add_parser("cancel", help="cancel exports from their page, as their owner")
    command.add_argument("job_ids", type=int, nargs="+")
    command.set_defaults(run=cancel)
    command = commands.add_parser("submit", help="checkouts, resets and exports through the real views")
    command.add_argument("--checkouts", type=int, default=0)
    command.add_argument("--resets", type=int, default=0)
    command.add_argument("--exports", type=int, default=0)
    command.set_defaults(run=submit)
    commands.add_parser("watchdog", help="run the export watchdog, as beat does").set_defaults(run=watchdog)
    commands.add_parser("reference", help="write the reference CSV (one plain COPY)").set_defaults(run=reference)
    commands.add_parser("state", help="report orders, charges, exports, resets, dead letters").set_defaults(run=state)
    args = parser.parse_args()
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
