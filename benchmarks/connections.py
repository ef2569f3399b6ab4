"""Connections Postgres holds with every process busy at once: Django direct, and through PgBouncer.

    .venv/bin/python benchmarks/connections.py [--seconds 15] [--rows 200000]

Bakes a project and runs its production stack (docker-compose.production.yml, the
images built as in tests/compose, stand-ins where no registry answers) twice: first
with Django connecting straight to Postgres (DATABASE_URL set to DATABASE_DIRECT_URL,
DATABASE_TRANSACTION_POOLING=false: how docs/database-connections.md says to turn
PgBouncer off), then as baked, through PgBouncer. Each time, after one warm-up task per
pool and one request, it makes every process busy for ``--seconds``:

- worker-high, worker-default: one payment per pool child whose sandbox charge lasts
  the whole window, sent to the pools' queues (``high``; ``default`` and ``low``);
- worker-export: exports of the demo user's ``--rows`` seeded transactions, back to back;
- gunicorn's 3 workers: 12 client threads requesting /readyz (a SELECT 1) non-stop;
- beat and outbox-relay run as always.

Meanwhile Postgres is sampled every 0.2 s: its client backends on the app database
(``pg_stat_activity``; all of them, idle or in a transaction, and where they come
from), and PgBouncer's clients (``SHOW CLIENTS``). Prints the peaks as a Markdown
table. Not part of the test suite.
"""

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baked import bake  # noqa: E402

from tests.compose import images  # noqa: E402
from tests.compose.stack import Stack, free_port  # noqa: E402

FILES = ["docker-compose.production.yml"]
SLUG = "connection_bench"

# Run by `manage.py shell` in the django container: the load, sent at once. It exits
# (closing its own connection) before the sampling starts.
LOAD = """
import os
from config.celery_app import app
from django.apps import apps
from django.contrib.auth import get_user_model
from {slug}.payments.providers import SandboxProvider
from {slug}.payments.tasks import process_payment
from {slug}.exports.tasks import generate_csv_export

Order = apps.get_model("payments", "Order")
ExportJob = apps.get_model("exports", "ExportJob")
demo = get_user_model().objects.get(username="demo")
sandbox = SandboxProvider()
for queue, count in (("high", 4), ("default", 1), ("low", 1)):
    for _ in range(count):
        order = Order.objects.create(user=demo, amount_cents=1000)
        sandbox.plan(str(order.idempotency_key), "slow:{slow}")
        process_payment.apply_async((order.pk,), queue=queue)
for _ in range({exports}):
    generate_csv_export.delay(ExportJob.objects.create(user=demo).pk)
"""

WARM_UP = """
from {slug}.exports.tasks import generate_csv_export
from {slug}.payments.tasks import reconcile_stuck_payments
from django.apps import apps
from django.contrib.auth import get_user_model

ExportJob = apps.get_model("exports", "ExportJob")
demo = get_user_model().objects.get(username="demo")
for queue in ("high", "default", "low"):
    reconcile_stuck_payments.apply_async(kwargs={{"dry_run": True}}, queue=queue).get(timeout=60)
generate_csv_export.delay(ExportJob.objects.create(user=demo).pk).get(timeout=300)
"""

# The app's sessions on Postgres, not the sampler's own: total|in a transaction or query|addresses.
BACKENDS = (
    "SELECT count(*), count(*) FILTER (WHERE state <> 'idle'), string_agg(host(client_addr), ' ')"
    " FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
    " AND pid <> pg_backend_pid()"
)
SAMPLE_POSTGRES = (
    'end=$(($(date +%s) + $0)); while [ "$(date +%s)" -lt "$end" ]; do '
    f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -AtX -c "{BACKENDS}"; sleep 0.2; done'
)
SAMPLE_PGBOUNCER = (
    'end=$(($(date +%s) + $0)); while [ "$(date +%s)" -lt "$end" ]; do '
    'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -p 6432 -U "$POSTGRES_USER" -d pgbouncer -AtX --csv '
    '-c "SHOW CLIENTS" | grep -c "^[a-zA-Z]*,[^,]*,$POSTGRES_DB,"; sleep 0.2; done'
)


def connect_directly(path: Path) -> None:
    """Turn PgBouncer off the documented way: DATABASE_URL straight to Postgres, pooling off."""
    env_file = path / ".envs/.production/.postgres"
    text = env_file.read_text()
    direct = re.search(r"^DATABASE_DIRECT_URL=(.*)$", text, re.MULTILINE).group(1)
    text = re.sub(r"^DATABASE_URL=.*$", f"DATABASE_URL={direct}", text, flags=re.MULTILINE)
    env_file.write_text(text.replace("DATABASE_TRANSACTION_POOLING=true", "DATABASE_TRANSACTION_POOLING=false"))


def shell(stack: Stack, script: str, timeout: float = 600) -> None:
    stack.exec("django", "python", "manage.py", "shell", input=script, timeout=timeout)


def hammer(url: str, until: float) -> None:
    """GET ``url`` with the site's Host, as a proxy would, until ``until`` (monotonic)."""
    request = urllib.request.Request(url, headers={"Host": "example.com", "X-Forwarded-Proto": "https"})
    while time.monotonic() < until:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def addresses(stack: Stack) -> dict[str, str]:
    """Container address -> compose service."""
    found = {}
    for container in stack.containers():
        for network in container["NetworkSettings"]["Networks"].values():
            found[network["IPAddress"]] = stack.service_of(container)
    return found


def measure(stack: Stack, seconds: int, rows: int) -> dict:
    stack.up("--build")
    stack.exec("django", "python", "manage.py", "seed_demo_data", "--transactions", str(rows), "--orders", "0",
               timeout=1800)  # fmt: skip
    url = f"http://127.0.0.1:{stack.env['PORT']}/readyz"
    hammer(url, time.monotonic() + 2)
    shell(stack, WARM_UP.format(slug=SLUG))  # every pool has connected once

    # The charges outlast the window by a little, and stay under worker-high's 25 s soft limit.
    shell(stack, LOAD.format(slug=SLUG, slow=seconds + 3, exports=2 * seconds))
    until = time.monotonic() + seconds
    clients = [threading.Thread(target=hammer, args=(url, until)) for _ in range(12)]
    for client in clients:
        client.start()
    samplers = {
        service: subprocess.Popen(
            stack.command("exec", "-T", service, "sh", "-c", script, str(seconds)),
            cwd=stack.path,
            env=os.environ | stack.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for service, script in (("postgres", SAMPLE_POSTGRES), ("pgbouncer", SAMPLE_PGBOUNCER))
    }
    outputs = {service: process.communicate(timeout=seconds + 60)[0] for service, process in samplers.items()}
    for client in clients:
        client.join()

    samples = [line.split("|") for line in outputs["postgres"].splitlines() if line.count("|") == 2]
    peak = max(samples, key=lambda sample: int(sample[0]))
    services = addresses(stack)
    return {
        "samples": len(samples),
        "held": int(peak[0]),
        "busy": max(int(sample[1]) for sample in samples),
        "from": Counter(services.get(address, address) for address in peak[2].split()),
        "pgbouncer_clients": max((int(line) for line in outputs["pgbouncer"].split() if line.isdigit()), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="length of the busy window (at most 20)")
    parser.add_argument("--rows", type=int, default=200_000, help="seeded transactions (each export's size)")
    options = parser.parse_args()
    if not 0 < options.seconds <= 20:
        parser.error("--seconds: 1 to 20 (a payment must stay under worker-high's 25 s soft time limit)")

    results = {}
    for setup in ("direct", "pgbouncer"):
        path = bake("connection-bench", project_name="Connection Bench")
        if setup == "direct":
            connect_directly(path)
        stack = Stack(path, FILES, {"PORT": str(free_port())})
        for image in images.compose_images(path, FILES):
            images.ensure(image)
        try:
            results[setup] = measure(stack, options.seconds, options.rows)
        finally:
            stack.down()
        print(f"{setup}: {results[setup]}", file=sys.stderr)

    print(
        "| Django connects | Postgres client backends, peak | of them in a transaction, peak | from | PgBouncer's clients, peak |"
    )
    print("| --- | ---: | ---: | --- | ---: |")
    for setup, label in (("direct", "straight to Postgres"), ("pgbouncer", "through PgBouncer")):
        result = results[setup]
        origin = ", ".join(f"{service} {count}" for service, count in sorted(result["from"].items()))
        clients = result["pgbouncer_clients"] if setup == "pgbouncer" else "-"
        print(f"| {label} | {result['held']} | {result['busy']} | {origin} | {clients} |")


if __name__ == "__main__":
    main()
