"""Import benchmark: our CSV import task against psql's ``\\copy ... FROM`` of the same file, side by side.

    .venv/bin/python benchmarks/imports.py [--rows 250000 2000000] [--runs 3]

Bakes the template into a temporary directory, creates the database
``blueprint_imports`` on the local Postgres (127.0.0.1:5432) with the user
``demo`` (``seed_demo_data --transactions 0``), and for each row count N:

* writes one CSV file of N rows (``created_at,amount,currency,description``: ISO
  timestamps with an offset, amounts with two decimals, some negative, EUR/USD/GBP,
  descriptions like ``Coffee Corner #1234``, some with a comma, quoted) under the
  temporary directory;
* starts a fresh pool of each kind that takes the import: the queue is read from
  the baked project's ``config/topology.py`` (``ROUTES["*.imports.tasks.*"]``),
  the pools are those whose queues include it (``python -m config.worker <pool>``);
* ``--runs`` times, alternately (the baseline first in odd runs, ours first in
  even runs), each on an empty table (``TRUNCATE exports_transaction`` first):

  - ``\\copy``: ``psql -c "\\copy exports_transaction (created_at, amount,
    currency, description) FROM 'file' (FORMAT csv, HEADER)"`` as a subprocess,
    wall time, with ``user_id`` defaulting to the demo user's id for it (``ALTER
    TABLE ... SET DEFAULT``, dropped afterwards): Postgres's own bulk load, the
    ceiling;
  - ours: ``TransactionImport.receive(user, File(...))`` in the project's shell
    (what the upload view does: the file stored, the row and its outbox message
    committed, the message published right after COMMIT), timed from the row's
    ``created_at`` to its ``finished_at`` (``completed`` with N rows, checked);
    the wall time the client saw (``receive`` to polling the row ``completed``) too;

* before the first run, one task that warms the pool (an import that does not
  exist); the peak RSS (VmHWM) of the pool processes that take the import,
  sampled while each import runs (a process replaced after a task keeps its peak
  in the figure).

The outbox needs no relay here: ``outbox.send`` publishes the message from the
shell right after COMMIT when the broker answers (``relay.publish_after_commit``);
the relay only sends what that missed. Every message's ``sent_at`` is checked, and
the run fails if one was left to a relay.

After the last import of the largest N (its rows left in the table), at once: the
table's statistics (``pg_stat_user_tables``: ``last_analyze``,
``n_mod_since_analyze``, ...) and one export of the demo user's rows
(``ExportJob`` + ``generate_csv_export`` on the ``worker-export`` pool, started if
the import does not run there), from the job's creation to its ``finished_at``.

Prints a table. Needs Postgres and Redis on 127.0.0.1 and psql on PATH. Not part
of the test suite.
"""

import argparse
import csv
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from baked import POSTGRES, Baked, baked_project
from export import SHELL_HELPERS, last_dict, median_by, pool_pids, seconds_of, stop

DATABASE = "blueprint_imports"
PSQL = ["psql", *POSTGRES, "-d", DATABASE, "-v", "ON_ERROR_STOP=1"]
ROUTE = "*.imports.tasks.*"
COLUMNS = ("created_at", "amount", "currency", "description")
MERCHANTS = ["Coffee Corner", "City Rail", "Grocer & Sons", "Bookshop", "Cloud Hosting", "Pharmacy", "Cinema"]
WITH_COMMA = ["Smith, Jones & Co", "Books, Maps and More"]  # quoted in the file
CURRENCIES = ["EUR", "USD", "GBP"]

TOPOLOGY = f"""
import json
from config import topology
queue = topology.ROUTES[{ROUTE!r}]
print(json.dumps({{"queue": queue, "pools": [pool.name for pool in topology.POOLS if queue in pool.queues],
                  "export_pools": [pool.name for pool in topology.POOLS if "export" in pool.queues]}}))
"""

# Run in the project's shell, once per row count: every run of both, in turn.
# Every timestamp of ours is Django's timezone.now() on this host (the shell and
# the pool share a clock).
SIDE_BY_SIDE = r"""
import json, subprocess, time
from datetime import date
from pathlib import Path
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.db import connection
from {slug}.exports.models import ExportJob, Transaction
from {slug}.exports.tasks import generate_csv_export
from {slug}.imports.models import TransactionImport
from {slug}.imports.tasks import process_transaction_import
from {slug}.outbox.models import OutboxMessage
from {slug}.statements.models import StatementRun
from {slug}.statements.tasks import month_totals, user_batches

ROWS, RUNS, CSV_PATH, PSQL = {rows}, {runs}, {path}, {psql}
POOLS = {pools}  # main process ids of the pools that take the import
EXPORT_AFTER = {export_after}
user = get_user_model().objects.get(username="demo")
table = Transaction._meta.db_table
peak_kb = 0


def sample_rss():
    # VmHWM of every pool process now alive: a process replaced after a task was sampled while it ran.
    global peak_kb
    for main in POOLS:
        for pid in Path(f"/proc/{{main}}/task/{{main}}/children").read_text().split():
            try:
                status = Path(f"/proc/{{pid}}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))


def sql(statement):
    with connection.cursor() as cursor:
        cursor.execute(statement)


def baseline():
    sql(f"TRUNCATE {{table}}")
    sql(f"ALTER TABLE {{table}} ALTER COLUMN user_id SET DEFAULT {{user.pk}}")
    try:
        command = f"\\copy {{table}} (created_at, amount, currency, description) FROM '{{CSV_PATH}}' (FORMAT csv, HEADER)"
        start = time.perf_counter()
        output = subprocess.run([*PSQL, "-c", command], check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - start
    finally:
        sql(f"ALTER TABLE {{table}} ALTER COLUMN user_id DROP DEFAULT")
    rows = int(output.split()[-1])  # "COPY <rows>"
    if rows != ROWS:
        raise RuntimeError(f"\\copy FROM loaded {{rows}} rows, not {{ROWS}}")
    return {{"seconds": seconds, "rows": rows}}


def ours():
    sql(f"TRUNCATE {{table}}")
    start = time.perf_counter()
    with open(CSV_PATH, "rb") as content:
        upload = TransactionImport.receive(user, File(content, name="bench.csv"))
    received = time.perf_counter() - start
    message = OutboxMessage.objects.get(task_name=process_transaction_import.name, args=[upload.pk])
    if message.sent_at is None:
        raise RuntimeError(f"import {{upload.pk}}: not published after COMMIT ({{message.last_error}}): left to a relay")
    deadline = time.monotonic() + 3600
    while TransactionImport.objects.filter(pk=upload.pk, status=TransactionImport.Status.PENDING).exists():
        sample_rss()
        if time.monotonic() > deadline:
            raise RuntimeError(f"import {{upload.pk}} still pending after an hour")
        time.sleep(0.02)
    waited = time.perf_counter() - start
    sample_rss()
    upload.refresh_from_db()
    if upload.status != TransactionImport.Status.COMPLETED or upload.rows != ROWS:
        raise RuntimeError(f"import {{upload.pk}}: {{upload.status}}, {{upload.rows}} rows of {{ROWS}}: {{upload.error}}")
    upload.file.delete(save=False)
    return {{"seconds": (upload.finished_at - upload.created_at).total_seconds(), "client_seconds": waited,
            "receive_seconds": received, "rows": upload.rows}}


{helpers}


def export():
    stats = table_stats()  # the moment the import is seen completed
    figures = timed_export()
    if figures["rows"] != ROWS:
        raise RuntimeError(f"the export wrote {{figures['rows']}} rows of {{ROWS}}")
    return {{"stats": stats, **figures, "stats_after": table_stats()}}


def statements():
    # The monthly statements' queries over these rows (statements/tasks.py): the month's
    # users in batches, then each batch's totals per user and currency.
    run = StatementRun(month=date(2025, 3, 1))
    start = time.perf_counter()
    lines = 0
    for first, last in user_batches(run, settings.STATEMENT_BATCH_SIZE):
        lines += len(list(month_totals(run, first, last)))
    return {{"seconds": time.perf_counter() - start, "lines": lines}}


def stale_then_analyzed():
    # The same rows loaded by \copy, which analyzes nothing: what runs next meets
    # statistics from before the load (an empty table's). Then ANALYZE, and again.
    sql(f"TRUNCATE {{table}}")
    sql(f"ANALYZE {{table}}")
    baseline()
    figures = {{"stale": {{"statements": statements(), "export": export()}}}}
    sql(f"ANALYZE {{table}}")
    figures["analyzed"] = {{"statements": statements(), "export": export()}}
    return figures


connection.ensure_connection()
cold = cold_start(process_transaction_import)
result = {{"copy": [], "ours": [], "export": None}}
for run in range(1, RUNS + 1):
    for which in ("copy", "ours") if run % 2 else ("ours", "copy"):
        result[which].append(baseline() if which == "copy" else ours())
        if which == "ours" and run == RUNS and EXPORT_AFTER:
            # At once, before anything else touches the table: it holds the rows this import just wrote.
            result["export"] = export()
            result["statements"] = statements()
if EXPORT_AFTER:
    result["stale_then_analyzed"] = stale_then_analyzed()
result["peak_rss_kb"] = peak_kb
result["cold_start"] = cold
print(json.dumps(result))
"""


def write_csv(path: Path, rows: int, seed: int = 7) -> None:
    """N rows as an export (or a bank) would write them; the same file for every run."""
    rng = random.Random(seed)
    start = datetime(2025, 2, 1, tzinfo=UTC)
    merchants = MERCHANTS + WITH_COMMA
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(rows):
            moment = start + timedelta(seconds=i * 7 + rng.randint(0, 6), microseconds=rng.randint(0, 999_999))
            writer.writerow(
                (
                    moment.isoformat(timespec="microseconds"),
                    f"{rng.randint(-50_000, 50_000) / 100:.2f}",
                    rng.choice(CURRENCIES),
                    f"{rng.choice(merchants)} #{rng.randint(1000, 9999)}",
                )
            )


def measure(project: Baked, rows: int, runs: int, pools: list[str], export_after: bool) -> dict:
    path = project.path.parent / f"import-{rows}.csv"
    write_csv(path, rows)
    figures = {"rows": rows, "file_bytes": path.stat().st_size, "pools": pools}
    names = [*pools, *(["worker-export"] if export_after and "worker-export" not in pools else [])]
    workers = {name: project.popen("python", "-m", "config.worker", name) for name in names}
    try:
        for name in names:
            pool_pids(project, node=name.removeprefix("worker-"))  # until it answers
        script = SIDE_BY_SIDE.format(
            slug=project.slug,
            rows=rows,
            runs=runs,
            path=json.dumps(str(path)),
            psql=json.dumps(PSQL),
            pools=[workers[name].pid for name in pools],
            export_after=export_after,
            helpers=SHELL_HELPERS,
        )
        result = last_dict(project.sh("python", "manage.py", "shell", "-c", script).stdout)
    finally:
        for worker in workers.values():
            stop(worker)
        path.unlink()
    figures |= result
    figures["copy_median"] = median_by(result["copy"], "seconds")
    figures["ours_median"] = median_by(result["ours"], "seconds")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000, 2_000_000])
    parser.add_argument("--runs", type=int, default=3, help="runs of each per row count (the median is shown)")
    options = parser.parse_args()

    with baked_project(DATABASE, redis_db=13, IMPORT_MAX_BYTES="1000000000") as project:
        topology = last_dict(project.sh("python", "-c", TOPOLOGY).stdout)
        if not topology["pools"]:
            raise RuntimeError(f"no pool consumes {topology['queue']!r}, where {ROUTE} goes")
        project.sh("python", "manage.py", "seed_demo_data", "--transactions", "0", "--orders", "0")
        largest = max(options.rows)
        results = [
            measure(project, rows, options.runs, topology["pools"], export_after=rows == largest)
            for rows in options.rows
        ]

    copy_s, share = "\\copy s", "% of \\copy"
    print(f"\nCSV import against psql's \\copy ... FROM, {os.cpu_count()} cores, local Postgres")
    print(f"The import's route: {ROUTE} -> queue {topology['queue']!r}, pools {', '.join(topology['pools'])} "
          "(fresh per row count)")  # fmt: skip
    print("Each run on an empty table (TRUNCATE first); \\copy first in odd runs, ours first in even runs\n")
    print(
        f"{'rows':>10} {'file MB':>8} {copy_s:>8} {'ours s':>8} {share:>10} {'rows/s':>10} {'peak RSS':>9}   every run"
    )
    for r in results:
        copy, ours = r["copy_median"]["seconds"], r["ours_median"]["seconds"]
        print(f"{r['rows']:>10,} {r['file_bytes'] / 1e6:>8.1f} {copy:>8.2f} {ours:>8.2f} {100 * copy / ours:>9.0f}% "
              f"{r['rows'] / ours:>10,.0f} {r['peak_rss_kb'] / 1024:>6.0f} MB   "
              f"\\copy {seconds_of(r['copy'])}; ours {seconds_of(r['ours'])}")  # fmt: skip
        print(f"{'':>10} {'':>8} {'':>8} {'':>8} {'':>10} {'':>10} {'':>9}   "
              f"ours, client (receive -> seen completed) {seconds_of(r['ours'], 'client_seconds')}, "
              f"of which receive() {seconds_of(r['ours'], 'receive_seconds')}")  # fmt: skip
        cold = r["cold_start"]
        print(f"{'':>10} {'':>8} {'':>8} {'':>8} {'':>10} {'':>10} {'':>9}   "
              f"not counted: a fresh pool's first task {cold['first']:.2f} s, the next {cold['second']:.2f} s")  # fmt: skip
    print("\n(ours: the import's created_at -> finished_at, its foreign keys checked, on a pool warmed by one task "
          "that reads no file (its cost is shown); \\copy: the psql subprocess, wall; rows/s: ours; "
          "peak RSS: VmHWM of the import pool's processes)")  # fmt: skip

    for r in results:
        if not r.get("export"):
            continue
        export = r["export"]
        print(f"\nRight after our last import of {r['rows']:,} rows, the table as it left it:")
        for label, stats in (("seen completed", export["stats"]), ("after the export", export["stats_after"])):
            print(f"  {label}: last_analyze {stats['last_analyze']}, last_autoanalyze {stats['last_autoanalyze']}, "
                  f"n_mod_since_analyze {stats['n_mod_since_analyze']:,}, reltuples {stats['reltuples']:,}, "
                  f"n_live_tup {stats['n_live_tup']:,}; ANALYZE running: {stats['analyzing'] or 'no'}")  # fmt: skip
        print(f"  one export of those rows: {export['seconds']:.2f} s (created -> finished_at; task "
              f"{export['task_seconds']:.2f} s, client {export['client_seconds']:.2f} s, {export['bytes']:,} bytes)")  # fmt: skip
        print(
            f"  the month's statements (2025-03, {r['statements']['lines']} lines): {r['statements']['seconds']:.2f} s"
        )
        stale, analyzed = r["stale_then_analyzed"]["stale"], r["stale_then_analyzed"]["analyzed"]
        print(f"  the same rows loaded by \\copy instead (no ANALYZE; statistics of an empty table): "
              f"statements {stale['statements']['seconds']:.2f} s, export {stale['export']['seconds']:.2f} s; "
              f"after an ANALYZE: statements {analyzed['statements']['seconds']:.2f} s, "
              f"export {analyzed['export']['seconds']:.2f} s")  # fmt: skip
        print("  (pg_stat_user_tables counts a backend's changes when it goes idle: a worker still busy, e.g. in\n"
              "   its own ANALYZE, has not reported its rows yet; reltuples -1: never analyzed since TRUNCATE)")  # fmt: skip


if __name__ == "__main__":
    main()
