"""Export benchmark: our export task vs plain COPY vs the source article's pattern.

    .venv/bin/python benchmarks/export.py [--rows 1000000 5000000] [--skip-article]

Bakes the template into a temporary directory, creates the database
``blueprint_bench`` on the local Postgres (127.0.0.1:5432) and, for each row
count, seeds the user ``demo`` with ``seed_demo_data`` and measures:

* plain COPY: ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` of the same rows,
  read by psycopg and thrown away: the ceiling for moving these bytes;
* ours: ``generate_csv_export`` on a real ``worker-export`` pool started from the
  Procfile; time from the job's start to its end, and the peak RSS (VmHWM) of
  the pool process that ran it;
* the article's pattern: ``queryset[offset:].iterator()`` into an in-memory
  ``StringIO`` that is written out at the end, run in its own process.

Prints a table. Needs Postgres and Redis on 127.0.0.1. Not part of the test suite.
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

from baked import Baked, baked_project

DATABASE = "blueprint_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"

PLAIN_COPY = """
import json, time, psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
uid = get_user_model().objects.get(username="demo").pk
with psycopg.connect(%(dsn)r) as conn, conn.cursor() as cur:
    start = time.perf_counter(); size = 0
    sql = "COPY (SELECT id, created_at, amount, currency, description FROM exports_transaction WHERE user_id = %%s ORDER BY id) TO STDOUT (FORMAT csv)"
    with cur.copy(sql, [uid]) as copy:
        for chunk in copy:
            size += len(chunk)
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes": size}))
"""

ARTICLE = """
import csv, io, json, resource, tempfile, time
from django.contrib.auth import get_user_model
from {slug}.exports.models import Transaction
user = get_user_model().objects.get(username="demo")
start = time.perf_counter()
offset, batch_size = 0, 2000
queryset = Transaction.objects.filter(user=user).order_by("id")
buffer = io.StringIO()
writer = csv.writer(buffer)
for transaction in queryset[offset:].iterator(chunk_size=batch_size):
    writer.writerow([transaction.id, transaction.amount, transaction.created_at])
    offset += 1
with tempfile.TemporaryFile("w") as upload:  # "upload_to_storage(..., buffer.getvalue())"
    upload.write(buffer.getvalue())
print(json.dumps({{"seconds": time.perf_counter() - start, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""

OURS = """
import json
from {slug}.exports.models import ExportJob
from {slug}.exports.tasks import generate_csv_export
from django.contrib.auth import get_user_model
job = ExportJob.objects.create(user=get_user_model().objects.get(username="demo"))
result = generate_csv_export.delay(job.pk)
print(result.get(timeout=1800))
job.refresh_from_db()
print(json.dumps({{"seconds": (job.finished_at - job.started_at).total_seconds(), "rows": job.processed_rows,
                  "bytes": job.bytes_written}}))
"""


def last_dict(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def vmhwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def measure(project: Baked, rows: int, skip_article: bool) -> dict:
    seed = time.perf_counter()
    project.sh("python", "manage.py", "flush", "--no-input")
    project.sh("python", "manage.py", "seed_demo_data", "--transactions", str(rows), "--orders", "0")
    seeded = time.perf_counter() - seed
    project.sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DATABASE, "-qc", "VACUUM ANALYZE exports_transaction")
    figures = {"rows": rows, "seed_seconds": seeded}

    copy = last_dict(project.sh("python", "manage.py", "shell", "-c", PLAIN_COPY % {"dsn": DATABASE_URL}).stdout)
    figures["copy"] = {"rows_per_second": rows / copy["seconds"], "seconds": copy["seconds"]}

    worker = project.popen("python", "-m", "config.worker", "worker-export")
    try:
        time.sleep(1)
        pool_pids = []
        deadline = time.monotonic() + 60
        while not pool_pids and time.monotonic() < deadline:
            inspect = "from config.celery_app import app; import json; print(json.dumps(app.control.inspect(timeout=1).stats()))"
            stats = json.loads(project.sh("python", "-c", inspect).stdout or "null") or {}
            pool_pids = [pid for node in stats.values() for pid in node["pool"]["processes"]]
        result = last_dict(project.sh("python", "manage.py", "shell", "-c", OURS.format(slug=project.slug)).stdout)
        figures["ours"] = {
            "rows_per_second": rows / result["seconds"],
            "seconds": result["seconds"],
            "peak_rss_mb": max(vmhwm_kb(pid) for pid in pool_pids) / 1024,
            "main_process_rss_mb": vmhwm_kb(worker.pid) / 1024,
            "bytes": result["bytes"],
        }
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)

    if not skip_article:
        article = last_dict(project.sh("python", "manage.py", "shell", "-c", ARTICLE.format(slug=project.slug)).stdout)
        figures["article"] = {
            "rows_per_second": rows / article["seconds"],
            "seconds": article["seconds"],
            "peak_rss_mb": article["maxrss_kb"] / 1024,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--skip-article", action="store_true", help="skip the slow in-memory pattern")
    options = parser.parse_args()

    with baked_project(DATABASE, redis_db=9) as project:
        results = [measure(project, rows, options.skip_article) for rows in options.rows]

    print(f"\nCSV export, {os.cpu_count()} cores, local Postgres (batch 100,000 rows)\n")
    print(f"{'rows':>10} {'what':<28} {'seconds':>8} {'rows/s':>10} {'% of COPY':>10} {'peak RSS':>10}")
    for r in results:
        copy_rate = r["copy"]["rows_per_second"]
        lines = [
            ("plain COPY TO STDOUT", r["copy"], None),
            ("ours (worker-export)", r["ours"], r["ours"]["peak_rss_mb"]),
        ]
        if "article" in r:
            lines.append(("article: offset + StringIO", r["article"], r["article"]["peak_rss_mb"]))
        for name, data, rss in lines:
            share = 100 * data["rows_per_second"] / copy_rate
            rss_text = f"{rss:.0f} MB" if rss is not None else "-"
            print(f"{r['rows']:>10,} {name:<28} {data['seconds']:>8.2f} {data['rows_per_second']:>10,.0f} "
                  f"{share:>9.0f}% {rss_text:>10}")  # fmt: skip
        print(f"{r['rows']:>10,} {'seed_demo_data':<28} {r['seed_seconds']:>8.2f}")
    print("\n(peak RSS: VmHWM of the pool process that ran the export; the article's: its process' maxrss)")


if __name__ == "__main__":
    main()
