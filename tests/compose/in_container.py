"""Run inside a stack's django container: ``manage.py shell`` reads this file from stdin.

The action and its arguments come from the environment (``docker compose exec -e``),
because ``shell`` takes no arguments for a script. The last line printed is
``RESULT: <json>``. Only the project's public surface is used (models by app label,
tasks by registered name), so the script works for any project slug, and in the
production image, which has no test tools.
"""

import hashlib
import importlib
import json
import os
import time

from config.celery_app import app
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import connection

Order = apps.get_model("payments", "Order")
SandboxCharge = apps.get_model("payments", "SandboxCharge")
ExportJob = apps.get_model("exports", "ExportJob")
TIMEOUT = float(os.environ.get("TIMEOUT", "120"))


def module(app_label: str, name: str):
    """``<project>.<app_label>.<name>``, whatever the project is called."""
    return importlib.import_module(f"{apps.get_app_config(app_label).module.__name__}.{name}")


def task(suffix: str):
    """The task registered as ``<project>.<suffix>`` (e.g. ``payments.tasks.process_payment``)."""
    app_label, _, _ = suffix.partition(".")
    module(app_label, "tasks")
    return next(task for name, task in app.tasks.items() if name.endswith(suffix))


def demo():
    return get_user_model().objects.get(username="demo")


def result_of(async_result) -> dict:
    value = async_result.get(timeout=TIMEOUT)
    return {
        "result": value,
        "worker": async_result.worker,
        "queue": async_result.queue,
        "retries": async_result.retries,
    }


def sha256(field) -> str:
    with field.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def pay_one() -> dict:
    order = Order.objects.create(user=demo(), amount_cents=4200)
    return result_of(task("payments.tasks.process_payment").delay(order.pk)) | {"order": order.pk}


def export_now() -> dict:
    job = ExportJob.objects.create(user=demo())
    return result_of(task("exports.tasks.generate_csv_export").delay(job.pk)) | {"job": job.pk}


def exports_parallel() -> dict:
    """COUNT exports sent at once: which workers ran them, and the wall time until the last finished."""
    generate = task("exports.tasks.generate_csv_export")
    jobs = [ExportJob.objects.create(user=demo()) for _ in range(int(os.environ["COUNT"]))]
    started = time.perf_counter()
    results = [generate.delay(job.pk) for job in jobs]
    try:
        runs = [result_of(result) for result in results]
    except Exception as error:  # say where each export stood, not only that one was late
        states = [
            f"job {job.pk}: {job.status}, {job.processed_rows} rows, lease {job.lease_owner or '-'}, parts {job.parts}"
            for job in ExportJob.objects.filter(pk__in=[job.pk for job in jobs]).order_by("pk")
        ]
        raise RuntimeError(f"after {time.perf_counter() - started:.0f}s: " + "; ".join(states)) from error
    return {"runs": runs, "seconds": time.perf_counter() - started}


def export_start() -> dict:
    job = ExportJob.objects.create(user=demo())
    task("exports.tasks.generate_csv_export").delay(job.pk)
    return {"job": job.pk}


def export_status() -> dict:
    job = ExportJob.objects.get(pk=int(os.environ["JOB"]))
    runners = list(dict.fromkeys(name.rsplit("-", 1)[1].removesuffix(".csv") for name in job.parts))
    return {
        "status": job.status,
        "processed_rows": job.processed_rows,
        "lease_owner": job.lease_owner,
        "runners": runners,
        "sha256": sha256(job.file) if job.file else "",
    }


def export_reference() -> dict:
    """The demo user's transactions as one plain COPY: what every export must equal, byte for byte.

    Independent of the export engine's batches, parts and checkpoints: the header,
    then every row formatted by Postgres in a single statement.
    """
    csv_export = module("exports", "csv_export")
    transactions = apps.get_model("exports", "Transaction")
    user = demo()
    last = transactions.objects.filter(user=user).order_by("-pk").values_list("pk", flat=True).first() or 0
    sql = "COPY (" + csv_export.COPY_SELECT.format(table=transactions._meta.db_table) + ") TO STDOUT (FORMAT csv)"
    digest = hashlib.sha256(csv_export.HEADER_LINE)
    with connection.cursor() as cursor, cursor.cursor.copy(sql, [user.pk, 0, last]) as copy:
        for block in copy:
            digest.update(block)
    return {"sha256": digest.hexdigest()}


def payments_start() -> dict:
    """N new orders, each slowed down at the sandbox provider, all dispatched at once."""
    sandbox = module("payments", "providers").SandboxProvider()
    orders = [Order.objects.create(user=demo(), amount_cents=1000 + n) for n in range(int(os.environ["COUNT"]))]
    for order in orders:
        sandbox.plan(str(order.idempotency_key), f"slow:{os.environ.get('SLOW', '0.5')}")
    process_payment = task("payments.tasks.process_payment")
    for order in orders:
        process_payment.delay(order.pk)
    return {"orders": [order.pk for order in orders]}


def payments_status() -> dict:
    orders = Order.objects.filter(pk__in=json.loads(os.environ["ORDERS"]))
    keys = [str(order.idempotency_key) for order in orders]
    charges = SandboxCharge.objects.filter(idempotency_key__in=keys)
    return {
        "paid": orders.filter(status=Order.Status.PAID).count(),
        "statuses": sorted({order.status for order in orders}),
        "charges": charges.count(),
        "charged_keys": charges.values("idempotency_key").distinct().count(),
    }


def watchdog_now() -> dict:
    """One dry run of the export watchdog: a task routed to ``default`` that queries the database."""
    return result_of(task("exports.tasks.export_watchdog").delay(dry_run=True))


def ping() -> dict:
    replies = app.control.ping(timeout=float(os.environ.get("PING_TIMEOUT", "3"))) or []
    return {"workers": sorted(name for reply in replies for name in reply)}


ACTIONS = {
    "pay-one": pay_one,
    "export-now": export_now,
    "export-start": export_start,
    "exports-parallel": exports_parallel,
    "export-status": export_status,
    "export-reference": export_reference,
    "payments-start": payments_start,
    "payments-status": payments_status,
    "watchdog-now": watchdog_now,
    "ping": ping,
}
print("RESULT: " + json.dumps(ACTIONS[os.environ["ACTION"]]()))
