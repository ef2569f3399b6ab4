"""Dispatch cost of a checkout: ``delay_on_commit`` against ``outbox.send``, broker up and down.

    .venv/bin/python benchmarks/outbox.py [--transactions 300] [--redis-url redis://127.0.0.1:6379/12]

Each sample is one transaction that creates an order and dispatches its payment,
timed from BEGIN to the end of the on-commit publish: what a checkout request
spends on it. Broker up: Redis at ``--redis-url`` (no worker runs; the queue is
purged afterwards). Broker down: a port where nothing listens. Not part of the
test suite.
"""

import argparse
import json
import socket

from baked import baked_project

LOAD = """
import json, time
from django.contrib.auth import get_user_model
from django.db import transaction
from {slug} import outbox
from {slug}.payments.models import Order
from {slug}.payments.tasks import process_payment

user, _ = get_user_model().objects.get_or_create(username="bench")

def plain():
    with transaction.atomic():
        Order.objects.create(user=user, amount_cents=100)

def on_commit():
    with transaction.atomic():
        order = Order.objects.create(user=user, amount_cents=100)
        process_payment.delay_on_commit(order.pk)

def through_outbox():
    with transaction.atomic():
        order = Order.objects.create(user=user, amount_cents=100)
        outbox.send(process_payment, order.pk)

variants = {{"transaction alone": plain, "delay_on_commit": on_commit, "outbox.send": through_outbox}}
samples = {{name: [] for name in {names}}}
for _ in range({rounds}):
    for name in samples:  # interleaved, so that load on the machine hits every variant alike
        start = time.perf_counter()
        try:
            variants[name]()
        except Exception:
            pass  # delay_on_commit with the broker down: the error page
        samples[name].append(time.perf_counter() - start)
print(json.dumps(samples))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(title: str, samples: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    for name, values in samples.items():
        values = sorted(values)
        p50, p95 = values[len(values) // 2], values[min(int(len(values) * 0.95), len(values) - 1)]
        print(f"  {name:18} n={len(values):4}  p50 {p50 * 1000:8.1f} ms  p95 {p95 * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    options = parser.parse_args()

    with baked_project("blueprint_outbox", redis_db=12, REDIS_URL=options.redis_url) as project:
        slug = project.slug

        def run(rounds: int, names: list[str], **env: str) -> dict:
            code = LOAD.format(slug=slug, rounds=rounds, names=names)
            project.env |= env
            output = project.sh("python", "manage.py", "shell", "-c", code, timeout=1800).stdout
            return json.loads(output.splitlines()[-1])

        up = run(options.transactions, ["transaction alone", "delay_on_commit", "outbox.send"])
        project.sh("python", "-m", "celery", "-A", "config.celery_app", "purge", "-f")
        dead = f"redis://127.0.0.1:{free_port()}/0"
        down = run(50, ["outbox.send"], CELERY_BROKER_URL=dead, CELERY_RESULT_BACKEND=dead)
        every = run(50, ["outbox.send"], CELERY_BROKER_URL=dead, CELERY_RESULT_BACKEND=dead,
                    OUTBOX_BROKER_DOWN_BACKOFF="0")  # fmt: skip
        old = run(2, ["delay_on_commit"], CELERY_BROKER_URL=dead, CELERY_RESULT_BACKEND=dead)

    report("Broker up (Redis):", up)
    report("Broker down (connection refused):", {
        "delay_on_commit": old["delay_on_commit"],
        "outbox.send": down["outbox.send"],
        "outbox.send, every request tries (no backoff)": every["outbox.send"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
