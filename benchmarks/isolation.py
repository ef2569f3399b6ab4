"""Isolation benchmark: do password resets wait behind a flood of exports?

    .venv/bin/python benchmarks/isolation.py [--exports 6] [--resets 40]

Bakes the template, seeds a user with transactions, and runs the same load twice
against real Redis and Postgres:

* ours: the three pools from the baked project's Procfile (worker-high,
  worker-default, worker-export), as in production;
* shared: one worker consuming every queue with Celery's defaults (concurrency =
  cores, prefetch multiplier 4, early acks): the common single-queue setup.

Load: more long exports than the export pool has slots, then password-reset tasks
one every 100 ms. The wait of each reset (enqueue to start, from the workers'
task-started events) is reported as p50 / p95 / max. Not part of the test suite.
"""

import argparse
import json
import os
import signal
import statistics
import time

from baked import Baked, baked_project

LOAD = """
import json, sys, threading, time
from django.contrib.auth import get_user_model
from config.celery_app import app
from {slug}.exports.models import ExportJob
from {slug}.exports.tasks import generate_csv_export
from {slug}.users.tasks import send_password_reset_email

exports, resets = {exports}, {resets}
started, sent = {{}}, {{}}

def listen():
    with app.connection() as connection:
        def on_started(event):
            started[event["uuid"]] = event["timestamp"]
        receiver = app.events.Receiver(connection, handlers={{"task-started": on_started}})
        receiver.capture(limit=None, timeout=None, wakeup=True)

threading.Thread(target=listen, daemon=True).start()
time.sleep(2)
demo = get_user_model().objects.get(username="demo")
for _ in range(exports):
    generate_csv_export.delay(ExportJob.objects.create(user=demo).pk)
time.sleep(3)  # let the exports occupy the workers
for _ in range(resets):
    sent_at = time.time()
    sent[send_password_reset_email.delay(demo.pk).id] = sent_at
    time.sleep(0.1)
deadline = time.time() + 600
while time.time() < deadline and not all(task_id in started for task_id in sent):
    time.sleep(0.2)
waits = [started[task_id] - sent[task_id] for task_id in sent if task_id in started]
print(json.dumps({{"waits": waits, "missing": len(sent) - len(waits)}}))
"""


def run_load(project: Baked, worker_commands, exports, resets) -> dict:
    project.sh("python", "-m", "celery", "-A", "config.celery_app", "purge", "-f")
    workers = [project.popen(*command) for command in worker_commands]
    try:
        time.sleep(8)  # workers up
        code = LOAD.format(slug=project.slug, exports=exports, resets=resets)
        return json.loads(project.sh("python", "manage.py", "shell", "-c", code, timeout=900).stdout.splitlines()[-1])
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGKILL)  # a benchmark: no need to wait for soft shutdowns
            worker.wait()


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=int, default=6, help="long exports to flood with")
    parser.add_argument("--resets", type=int, default=40, help="password resets to time")
    parser.add_argument("--rows", type=int, default=300_000, help="rows per export")
    options = parser.parse_args()

    slow_exports = {
        "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        # Make each export a long one (about 10 s per 100k rows) without a huge table.
        "EXPORT_BATCH_SIZE": "20000",
        "EXPORT_THROTTLE_SECONDS": "2",
    }
    with baked_project("blueprint_isolation", redis_db=10, **slow_exports) as project:
        project.sh("python", "manage.py", "seed_demo_data", "--transactions", str(options.rows), "--orders", "0")
        ours = [("python", "-m", "config.worker", pool) for pool in ("worker-high", "worker-default", "worker-export")]
        shared = [("python", "-m", "celery", "--app=config.celery_app", "worker", "--queues=high,default,low,export",
                   "--hostname=shared@%h", "--prefetch-multiplier=4", "--", "task.acks_late=false")]  # fmt: skip
        results = {
            "ours (3 pools)": run_load(project, ours, options.exports, options.resets),
            "shared pool (defaults)": run_load(project, shared, options.exports, options.resets),
        }

    print(f"\nPassword-reset wait (enqueue to start) while {options.exports} long exports run, "
          f"{options.resets} resets, {os.cpu_count()} cores\n")  # fmt: skip
    print(f"{'setup':<24} {'p50':>10} {'p95':>10} {'max':>10} {'not started':>12}")
    for name, result in results.items():
        waits = result["waits"]
        if waits:
            p50, p95, worst = statistics.median(waits), percentile(waits, 0.95), max(waits)
            print(
                f"{name:<24} {p50 * 1000:>8.1f}ms {p95 * 1000:>8.1f}ms {worst * 1000:>8.1f}ms {result['missing']:>12}"
            )
        else:
            print(f"{name:<24} {'-':>10} {'-':>10} {'-':>10} {result['missing']:>12}")


if __name__ == "__main__":
    main()
