"""Export benchmark: our export task against Postgres' own COPY to a file, side by side.

    .venv/bin/python benchmarks/export.py [--rows 500000 2000000] [--runs 3] [--article]

Bakes the template into a temporary directory, creates the database
``blueprint_bench`` on the local Postgres (127.0.0.1:5432) and, for each row
count, seeds the user ``demo`` with ``seed_demo_data`` and measures, in one run:

* COPY to a file: ``COPY (SELECT <the export's columns and formatting>) TO STDOUT
  (FORMAT csv)`` of the same rows (``csv_export.COPY_SELECT``), written by psycopg
  into a file under the media root, the way ``\\copy ... TO 'file'`` does: the
  ceiling for producing this file;
* ours: ``generate_csv_export`` on a real ``worker-export`` pool started with
  ``python -m config.worker worker-export``, from the job's creation (and
  dispatch) to its ``finished_at``: the time the user waits. The task's own span
  (``started_at`` to ``finished_at``) is printed too, and the peak RSS (VmHWM) of
  the pool process that ran it (a fresh pool per row count);
* the two are interleaved in one process (COPY to a file, then ours, ``--runs``
  times, after one COPY that warms the table into the page cache), so that both
  meet the same machine; the median run of each is shown, and every run listed;
* with ``--article``, the article's pattern: ``queryset[offset:].iterator()`` into
  an in-memory ``StringIO`` written out at the end, in its own process (slow).

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

# Side by side, interleaved (COPY to a file, then ours, --runs times), so that both
# meet the same machine. COPY to a file is what `\\copy (SELECT ...) TO 'file'`
# does: the server formats, the client writes what it receives. Ours is timed from
# the job's creation and dispatch to its finished_at: what the user waits for.
# Every timestamp is Django's timezone.now() on this host (the shell and the pool
# share a clock).
SIDE_BY_SIDE = """
import json, time
from pathlib import Path
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from {slug}.exports import csv_export
from {slug}.exports.models import ExportJob, Transaction
from {slug}.exports.tasks import generate_csv_export

user = get_user_model().objects.get(username="demo")
select = csv_export.COPY_SELECT.format(table=Transaction._meta.db_table)
path = Path(settings.MEDIA_ROOT) / "copy-to-file.csv"
path.parent.mkdir(parents=True, exist_ok=True)
connection.ensure_connection()


def copy_to_file():
    start = time.perf_counter()
    with path.open("wb", buffering=1 << 20) as out, connection.cursor() as cursor:
        with cursor.cursor.copy("COPY (" + select + ") TO STDOUT (FORMAT csv)", [user.pk, 0, 2**62]) as copy:
            out.write(csv_export.HEADER_LINE)
            for data in copy:
                out.write(data)
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return {{"seconds": seconds, "bytes": size}}


def ours():
    start = time.perf_counter()
    job = ExportJob.objects.create(user=user)
    outcome = generate_csv_export.delay(job.pk).get(timeout=1800)
    waited = time.perf_counter() - start
    job.refresh_from_db()
    assert outcome == "completed", outcome
    job.file.delete()
    return {{"seconds": (job.finished_at - job.created_at).total_seconds(),
            "task_seconds": (job.finished_at - job.started_at).total_seconds(),
            "client_seconds": waited, "rows": job.processed_rows, "bytes": job.bytes_written}}


copy_to_file()  # warms the table into the page cache; not counted
runs = [(copy_to_file(), ours()) for _ in range({runs})]
print(json.dumps({{"copy": [run[0] for run in runs], "ours": [run[1] for run in runs]}}))
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


def last_dict(output: str):
    return json.loads(output.strip().splitlines()[-1])


def median_by(runs: list[dict], key: str) -> dict:
    """The run whose ``key`` is the median (the lower one of an even count)."""
    return sorted(runs, key=lambda run: run[key])[(len(runs) - 1) // 2]


def seconds_of(runs: list[dict]) -> str:
    return ", ".join(f"{run['seconds']:.2f}" for run in runs) + " s"


def vmhwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def pool_pids(project: Baked) -> list[int]:
    inspect = (
        "from config.celery_app import app; import json; print(json.dumps(app.control.inspect(timeout=1).stats()))"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = json.loads(project.sh("python", "-c", inspect).stdout or "null") or {}
        if pids := [pid for node in stats.values() for pid in node["pool"]["processes"]]:
            return pids
    raise RuntimeError("the worker-export pool did not answer")


def measure(project: Baked, rows: int, runs: int, article: bool) -> dict:
    seed = time.perf_counter()
    project.sh("python", "manage.py", "flush", "--no-input")
    project.sh("python", "manage.py", "seed_demo_data", "--transactions", str(rows), "--orders", "0")
    seeded = time.perf_counter() - seed
    project.sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DATABASE, "-qc", "VACUUM ANALYZE exports_transaction")
    figures = {"rows": rows, "seed_seconds": seeded}

    worker = project.popen("python", "-m", "config.worker", "worker-export")
    try:
        pids = pool_pids(project)
        script = SIDE_BY_SIDE.format(slug=project.slug, runs=runs)
        result = last_dict(project.sh("python", "manage.py", "shell", "-c", script).stdout)
        peak_rss_mb = max(vmhwm_kb(pid) for pid in pids) / 1024
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    copy, ours = median_by(result["copy"], "seconds"), median_by(result["ours"], "seconds")
    if {run["bytes"] for run in result["ours"]} != {copy["bytes"]}:
        raise RuntimeError(f"not the same file: {result['ours']} against {copy['bytes']} bytes")
    figures["copy"] = {"rows_per_second": rows / copy["seconds"], **copy}
    figures["ours"] = {"rows_per_second": rows / ours["seconds"], "peak_rss_mb": peak_rss_mb, **ours}
    figures["all_runs"] = result

    if article:
        article_run = last_dict(
            project.sh("python", "manage.py", "shell", "-c", ARTICLE.format(slug=project.slug)).stdout
        )
        figures["article"] = {
            "rows_per_second": rows / article_run["seconds"],
            "seconds": article_run["seconds"],
            "peak_rss_mb": article_run["maxrss_kb"] / 1024,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--runs", type=int, default=3, help="side-by-side runs per row count (the median is shown)")
    parser.add_argument("--article", action="store_true", help="also run the article's slow in-memory pattern")
    options = parser.parse_args()

    with baked_project(DATABASE, redis_db=9) as project:
        results = [measure(project, rows, options.runs, options.article) for rows in options.rows]

    print(f"\nCSV export, {os.cpu_count()} cores, local Postgres, one disk for the media root\n")
    print(f"{'rows':>10} {'what':<34} {'seconds':>8} {'rows/s':>10} {'% of COPY':>10} {'peak RSS':>10}")
    for r in results:
        copy_rate = r["copy"]["rows_per_second"]
        lines = [
            ("COPY (SELECT ...) TO file", r["copy"], None),
            ("ours, created -> finished_at", r["ours"], r["ours"]["peak_rss_mb"]),
        ]
        if "article" in r:
            lines.append(("article: offset + StringIO", r["article"], r["article"]["peak_rss_mb"]))
        for name, data, rss in lines:
            share = 100 * data["rows_per_second"] / copy_rate
            rss_text = f"{rss:.0f} MB" if rss is not None else "-"
            print(f"{r['rows']:>10,} {name:<34} {data['seconds']:>8.2f} {data['rows_per_second']:>10,.0f} "
                  f"{share:>9.0f}% {rss_text:>10}")  # fmt: skip
        ours = r["ours"]
        print(f"{r['rows']:>10,} {'  of which the task (started_at ->)':<34} {ours['task_seconds']:>8.2f} "
              f"{r['rows'] / ours['task_seconds']:>10,.0f} {100 * r['rows'] / ours['task_seconds'] / copy_rate:>9.0f}%")  # fmt: skip
        print(f"{r['rows']:>10,} {'  seen by the client (delay->get)':<34} {ours['client_seconds']:>8.2f}")
        runs = r["all_runs"]
        print(f"{'':>10}   every run, COPY: {seconds_of(runs['copy'])}; ours: {seconds_of(runs['ours'])}")
        print(f"{r['rows']:>10,} {'seed_demo_data':<34} {r['seed_seconds']:>8.2f}   ({r['copy']['bytes']:,} bytes)")
    print("\n(peak RSS: VmHWM of the pool process that ran the export; the article's: its process' maxrss)")


if __name__ == "__main__":
    main()
