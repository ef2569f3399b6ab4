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
import random
import sys
import threading
import time
import uuid
from pathlib import Path

import django
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Q
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
            {"amount": "25.00", "currency": "EUR", "payment_method": "pm_card_visa", "submission_key": uuid.uuid4()},
        )
    for _ in range(args.resets):
        name = f"drill-{uuid.uuid4().hex[:12]}"
        user = get_user_model().objects.create_user(name, f"{name}@example.com", "pw")
        post("password reset", reverse("password_reset"), {"email": user.email})
        # The request names the typed address; the worker fills in the account.
        resets.append({"user": user.pk, "request": PasswordResetRequest.objects.get(email=user.email).pk})
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
    """A user's transactions (demo's unless ``--user``) as one plain COPY: what every export must equal, byte for byte.

    Independent of the export engine's batches, parts and checkpoints: the header,
    then every row formatted by Postgres in a single statement.
    """
    csv_export = module("exports", "csv_export")
    user = get_user_model().objects.get(username=args.user)
    last = Transaction.objects.filter(user=user).order_by("-pk").values_list("pk", flat=True).first() or 0
    sql = "COPY (" + csv_export.COPY_SELECT.format(table=Transaction._meta.db_table) + ") TO STDOUT (FORMAT csv)"
    path = Path(settings.MEDIA_ROOT) / "drills" / f"reference-{user.username}.csv"
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


# ------------------------------------------------------------------------------
# The chaos soak (tests/drills/soak.py): its users, its load, what it checks.
# ------------------------------------------------------------------------------
SOAK_PASSWORD = "soak-password"
# Sandbox scripts for payments the soak creates directly (the checkout form
# cannot script the provider), each with the end it must reach: the provider
# slow, timing out before or after charging, down twice, declining, refusing
# the request (a permanent failure: one dead letter), or timing out on every
# attempt the task has (a dead letter, then reconciliation sends it again).
SOAK_PLANS = {
    "slow": (["slow:2"], "paid"),
    "timeout": (["timeout"], "paid"),
    "timeout_after_charge": (["timeout_after_charge"], "paid"),
    "unavailable": (["unavailable", "unavailable"], "paid"),
    "hang_after_charge": (["hang_after_charge:4"], "paid"),
    "decline": (["decline"], "failed"),
    "reject": (["reject"], "failed"),
    "retries_exhausted": (["timeout"] * 5, "paid"),
}
SOAK_CARDS = {"pm_card_visa": "paid", "pm_card_chargeDeclined": "failed"}


def soak_users(role: str):
    return get_user_model().objects.filter(username__startswith=f"soak-{role}-").order_by("pk")


def soak_setup(args) -> dict:
    """Customers (checkouts, resets) and export owners with 0 to many transactions each, plus their reference CSVs."""
    User = get_user_model()
    for index in range(args.customers):
        name = f"soak-customer-{index}"
        User.objects.create_user(name, f"{name}@example.com", SOAK_PASSWORD)
    references = {}
    for index, rows in enumerate(args.export_rows):
        name = f"soak-exporter-{index}"
        user = User.objects.create_user(name, f"{name}@example.com", SOAK_PASSWORD)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {Transaction._meta.db_table} (user_id, created_at, amount, currency, description) "  # noqa: S608
                "SELECT %s, now() - make_interval(secs => n * 7), ((n * 7919) %% 100000 - 50000) / 100.0, 'EUR', "
                "'soak, \"quoted\" #' || n FROM generate_series(1, %s) AS n",
                [user.pk, rows],
            )
        references[name] = reference(argparse.Namespace(user=name))["path"]
    return {"references": references}


class Web:
    """One signed-in browser: a requests session with its CSRF token, that clicks again when the site is down."""

    def __init__(self, base: str, username: str, deadline: float):
        import requests

        self.requests = requests
        self.base, self.username, self.deadline = base, username, deadline
        self.session = requests.Session()
        self.signed_in = False
        self.location = ""  # where the last answered POST redirected to

    def csrf(self) -> str:
        return self.session.cookies.get("csrftoken", "")

    def sign_in(self) -> bool:
        try:
            self.session.get(f"{self.base}/accounts/login/", timeout=10)
            response = self.session.post(
                f"{self.base}/accounts/login/",
                {"username": self.username, "password": SOAK_PASSWORD, "csrfmiddlewaretoken": self.csrf()},
                allow_redirects=False,
                timeout=10,
            )
        except self.requests.RequestException:
            return False
        self.signed_in = response.status_code == 302
        return self.signed_in

    def post(self, path: str, data: dict, attempts: int = 8) -> list:
        """POST ``data`` until the site answers (a user clicking again), ``attempts`` times at most.

        Returns every answer: a status code, or the error's class name.
        """
        answers = []
        for _ in range(attempts):
            if time.monotonic() > self.deadline + 30:
                break
            if not self.signed_in and not self.sign_in():
                answers.append("sign-in-failed")
                time.sleep(1)
                continue
            try:
                response = self.session.post(
                    f"{self.base}{path}",
                    data,
                    headers={"X-CSRFToken": self.csrf()},
                    allow_redirects=False,
                    timeout=15,
                )
            except self.requests.RequestException as error:
                answers.append(type(error).__name__)
                time.sleep(1)
                continue
            answers.append(response.status_code)
            if response.status_code < 500:
                self.location = response.headers.get("Location", "")
                return answers
            time.sleep(1)
        self.location = ""
        return answers


def load(args) -> dict:
    """Real traffic for ``--seconds``, chosen by a seeded RNG; one JSON line per operation in ``--log``.

    Checkouts through the web process (a card that pays or is declined; some
    double-clicked: two POSTs of one form at once), payments with a scripted
    provider (SOAK_PLANS, created as the checkout view does: the order and its
    outbox row in one transaction), password resets for customers and for
    addresses nobody has, exports of every owner (some cancelled a few seconds
    later). Every POST is repeated while the site does not answer, as a user
    clicks again; a repeated form carries the same submission key.
    """
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    customers = list(soak_users("customer").values_list("username", flat=True))
    exporters = list(soak_users("exporter").values_list("username", flat=True))
    browsers = {name: Web(args.web, name, deadline) for name in customers + exporters}
    provider = module("payments", "providers").SandboxProvider()
    process_payment = module("payments", "tasks").process_payment
    outbox = importlib.import_module(f"{apps.get_app_config('outbox').name}")
    cancels: list[tuple[float, str, str]] = []  # (when, owner, job path)
    counts: dict[str, int] = {}
    started = time.monotonic()

    with open(args.log, "a") as log:

        def record(entry: dict) -> None:
            entry["t"] = round(time.monotonic() - started, 3)
            counts[entry["op"]] = counts.get(entry["op"], 0) + 1
            log.write(json.dumps(entry) + "\n")
            log.flush()

        def checkout() -> None:
            name = rng.choice(customers)
            browser, key = browsers[name], str(uuid.uuid4())
            card = rng.choices(list(SOAK_CARDS), [4, 1])[0]
            form = {"amount": f"{rng.randint(50, 99_999) / 100:.2f}", "currency": "EUR", "payment_method": card}
            form["submission_key"] = key
            answers = []
            if rng.random() < 0.2:  # a double click: the same form twice, at the same moment
                twin = Web(args.web, name, deadline)
                twin.session.cookies.update(browser.session.cookies)
                twin.signed_in = browser.signed_in
                thread = threading.Thread(target=lambda: answers.extend(twin.post("/payments/checkout/", form)))
                thread.start()
                answers += browser.post("/payments/checkout/", form)
                thread.join()
            else:
                answers += browser.post("/payments/checkout/", form)
            record({"op": "checkout", "user": name, "key": key, "expect": SOAK_CARDS[card], "answers": answers})

        def scripted_payment() -> None:
            plan = rng.choice(sorted(SOAK_PLANS))
            key = uuid.uuid4()
            try:
                provider.plan(str(key), *SOAK_PLANS[plan][0])
                with transaction.atomic():
                    user = soak_users("customer").get(username=rng.choice(customers))
                    order = Order.objects.create(
                        user=user,
                        amount_cents=rng.randint(50, 99_999),
                        idempotency_key=key,
                        payment_method="pm_card_visa",
                    )
                    outbox.send(process_payment, order.pk)
            except Exception as error:  # noqa: BLE001 (Redis or Postgres went away)
                # Most likely nothing was created; but a connection cut during COMMIT
                # leaves us not knowing. Either way the key says what its order must become.
                connection.close()
                entry = {"op": "scripted-payment", "plan": plan, "key": str(key), "error": type(error).__name__}
            else:
                entry = {"op": "scripted-payment", "plan": plan, "key": str(key), "order": order.pk}
            record(entry | {"expect": SOAK_PLANS[plan][1]})

        def reset() -> None:
            if rng.random() < 0.2:
                email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
            else:
                email = f"{rng.choice(customers)}@example.com"
            browser = browsers[rng.choice(customers)]  # anybody may ask, signed in or not
            answers = browser.post("/accounts/password_reset/", {"email": email})
            record({"op": "reset", "email": email, "answers": answers})

        def export() -> None:
            name = rng.choice(exporters)
            answers = browsers[name].post("/exports/start/", {})
            job = browsers[name].location
            record({"op": "export", "user": name, "answers": answers, "job": job})
            if job and rng.random() < 0.25:
                cancels.append((time.monotonic() + rng.uniform(0.5, 4), name, job))

        def cancel(name: str, job: str) -> None:
            answers = browsers[name].post(f"{job}cancel/", {})
            record({"op": "cancel", "user": name, "job": job, "answers": answers})

        operations = [checkout, scripted_payment, reset, export]
        while time.monotonic() < deadline:
            due = [entry for entry in cancels if entry[0] <= time.monotonic()]
            for entry in due:
                cancels.remove(entry)
                cancel(entry[1], entry[2])
            rng.choices(operations, [4, 3, 3, 2])[0]()
            time.sleep(rng.uniform(0.05, 0.4))
        for _, name, job in cancels:
            cancel(name, job)
    return {"operations": counts}


def soak_state(args) -> dict:
    """The soak's users' orders, charges, resets and exports, every lease and dead letter, the outbox."""
    customers = soak_users("customer")
    orders = Order.objects.filter(user__in=customers)
    keys = [str(key) for key in orders.values_list("idempotency_key", flat=True)]
    charges: dict[str, list[str]] = {}
    for key, charge_id in SandboxCharge.objects.filter(idempotency_key__in=keys).values_list(
        "idempotency_key", "charge_id"
    ):
        charges.setdefault(key, []).append(charge_id)
    return {
        "orders": [
            {
                "id": order.pk,
                "status": order.status,
                "key": str(order.idempotency_key),
                "submission_key": str(order.submission_key) if order.submission_key else None,
                "payment_method": order.payment_method,
                "charge_id": order.charge_id,
                "failure_reason": order.failure_reason,
                "attempts": order.payment_attempts,
            }
            for order in orders
        ],
        "charges": charges,
        "resets": [
            {"id": request.pk, "email": request.email or request.user.email, "sent": request.sent_at is not None}
            for request in PasswordResetRequest.objects.filter(
                Q(user__in=customers) | Q(email__in=customers.values("email"))
            ).select_related("user")
        ],
        "exports": [
            {
                "id": job.pk,
                "user": job.user.username,
                "status": job.status,
                "error": job.error,
                "file": default_storage.path(job.file.name) if job.file else None,
                "part_files": part_files(job),
            }
            for job in ExportJob.objects.filter(user__in=soak_users("exporter")).select_related("user")
        ],
        "leases": list(ExportJob.objects.exclude(lease_owner="").values_list("pk", flat=True)),
        "outbox_unsent": OutboxMessage.objects.filter(sent_at__isnull=True).count(),
        "failed_tasks": [
            {"task": failed.task_name, "args": failed.args, "exception": failed.exception_type, "id": failed.pk}
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
    command = commands.add_parser("reference", help="write a user's reference CSV (one plain COPY)")
    command.add_argument("--user", default="demo")
    command.set_defaults(run=reference)
    command = commands.add_parser("soak-setup", help="the chaos soak's customers and export owners")
    command.add_argument("--customers", type=int, default=8)
    command.add_argument("--export-rows", type=int, nargs="+", default=[0, 700, 4000, 12000])
    command.set_defaults(run=soak_setup)
    command = commands.add_parser("load", help="the chaos soak's load: real requests to the web process")
    command.add_argument("--web", required=True, help="the web process's base URL")
    command.add_argument("--seconds", type=float, required=True)
    command.add_argument("--seed", type=int, required=True)
    command.add_argument("--log", required=True, help="where to append one JSON line per operation")
    command.set_defaults(run=load)
    commands.add_parser("soak-state", help="what the soak's invariants read").set_defaults(run=soak_state)
    commands.add_parser("state", help="report orders, charges, exports, resets, dead letters").set_defaults(run=state)
    args = parser.parse_args()
    print(json.dumps(args.run(args)))


if __name__ == "__main__":
    main()
