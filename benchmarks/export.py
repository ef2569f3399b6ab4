"""Export benchmark: our export task against psql's ``\\copy`` to a file, in three table states.

    .venv/bin/python benchmarks/export.py [--rows 500000 2000000] [--others 10000000] [--runs 3] [--article]

Bakes the template into a temporary directory, creates the database
``blueprint_bench`` on the local Postgres (127.0.0.1:5432) and, for each row
count N, measures the export of the user ``demo``'s N transactions in three
states of the table, each in a database recreated (and migrated) for it, with a
fresh ``worker-export`` pool:

* ``fresh``: ``seed_demo_data --transactions N`` right after ``migrate``: the
  table was never analyzed, no VACUUM; exported at once, as the load left it;
* ``crowded``: first ``--others`` rows (10,000,000) of 10 other users, in one
  ``INSERT ... SELECT ... FROM generate_series`` shaped like the seed's rows, then
  ``ANALYZE``, then the demo user's N rows with ``seed_demo_data``: the
  statistics predate the demo user; exported at once, no maintenance;
* ``vacuumed``: ``seed_demo_data`` then ``VACUUM ANALYZE``: the table tidied up,
  not the state a user meets right after a load.

In each state, in one process, by turns (ours first in the first run, so that our
export meets the table as the load left it, then ``\\copy``; the next run
``\\copy`` first; ``--runs`` times each), after one
task that warms the pool without touching the table (an export of a job that does
not exist):

* ours: ``generate_csv_export`` on the real ``worker-export`` pool (``python -m
  config.worker worker-export``), from the job's creation (and dispatch) to its
  ``finished_at``: the time the user waits. The task's own span (``started_at``
  to ``finished_at``) and the client's wait are shown too, and the peak RSS
  (VmHWM) of the pool's processes;
* ``\\copy``: ``psql -c "\\copy (<the export's SELECT>) TO 'file' (FORMAT csv)"``
  as a subprocess, wall time: psql's own client-side copy of the same rows
  (``csv_export.COPY_SELECT`` for the whole user), the ceiling for producing this
  file. Without HEADER (COPY's header names differ from ours): every run of both
  must come to the same bytes, ours counting its header line (checked).

Before the first export of a state it prints the plan of the export's first
batch, as the planner makes it and as the export runs it (``KeysetBatch.plan()``:
in the batch's own transaction, plan pinned by ``csv_export.PIN_PLAN``), and the
table's statistics (``pg_stat_user_tables``) before and after the runs. With ``--article``, after the ``vacuumed`` runs, the
article's pattern: ``queryset[offset:].iterator()`` into an in-memory ``StringIO``
written out at the end, in its own process (slow).

Prints a table: per row count and state the median of each, ours as a share of
``\\copy``, the pool's peak RSS, and every run. Needs Postgres and Redis on
127.0.0.1 and psql on PATH. Not part of the test suite.
"""

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from baked import POSTGRES, Baked, baked_project

DATABASE = "blueprint_bench"
PSQL = ["psql", *POSTGRES, "-d", DATABASE, "-v", "ON_ERROR_STOP=1"]
STATES = {
    "fresh": "seed_demo_data right after migrate: never analyzed, no VACUUM, exported at once",
    "crowded": "{others:,} rows of {users} other users, ANALYZE, then the demo user's rows: "
    "statistics predate them; exported at once",
    "vacuumed": "seed_demo_data, then VACUUM ANALYZE: tidied up (not what a fresh load meets)",
}
OTHER_USERS = 10
MERCHANTS = ["Coffee Corner", "City Rail", "Grocer & Sons", "Bookshop", "Cloud Hosting", "Pharmacy", "Cinema"]

CREATE_USERS = """
import json
from django.contrib.auth import get_user_model
users = [get_user_model().objects.create_user(username=f"other{{i}}", email=f"other{{i}}@example.com") for i in range({count})]
print(json.dumps([user.pk for user in users]))
"""

# The other users' rows, shaped like seed_demo_data's (a year back, 7 s apart per
# user, amounts -500.00..500.00, EUR/USD/GBP, "<merchant> #<4 digits>"), the users
# interleaved as rows written over time would be.
OTHERS_SQL = """
INSERT INTO exports_transaction (user_id, created_at, amount, currency, description)
SELECT ('{{{ids}}}'::bigint[])[1 + g % {users}],
       now() - interval '365 days' + make_interval(secs => (g / {users}) * 7 + floor(random() * 7)),
       ((floor(random() * 100001) - 50000) / 100)::numeric(12, 2),
       (ARRAY['EUR', 'USD', 'GBP'])[1 + floor(random() * 3)::int],
       (ARRAY[{merchants}])[1 + floor(random() * {merchant_count})::int] || ' #' || (1000 + floor(random() * 9000)::int)
FROM generate_series(0, {rows} - 1) AS g
"""

# What both benchmarks' shell scripts need (this one's and imports.py's), put in
# whole where a script says {helpers}. It uses the script's `connection`, `table`,
# `time`, `user`, `ExportJob` and `generate_csv_export`.
SHELL_HELPERS = """
def table_stats():
    # The table's statistics as pg_stat_user_tables and pg_class have them, and whether an ANALYZE runs.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.reltuples::bigint, s.n_live_tup, s.n_mod_since_analyze, s.last_analyze, s.last_autoanalyze,"
            " s.last_vacuum, s.last_autovacuum,"
            " (SELECT string_agg(p.phase, ', ') FROM pg_stat_progress_analyze p WHERE p.relid = s.relid) AS analyzing"
            " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relname = %s",
            [table],
        )
        names = [column.name for column in cursor.description]
        return {name: value if value is None or isinstance(value, int) else str(value)
                for name, value in zip(names, cursor.fetchone())}


def timed_export():
    # One export of the demo user's rows on the worker-export pool, from the job's creation.
    start = time.perf_counter()
    job = ExportJob.objects.create(user=user)
    outcome = generate_csv_export.delay(job.pk).get(timeout=1800)
    waited = time.perf_counter() - start
    job.refresh_from_db()
    if outcome != "completed":
        raise RuntimeError(f"export {job.pk}: {outcome}: {job.error}")
    job.file.delete()
    return {"seconds": (job.finished_at - job.created_at).total_seconds(),
            "task_seconds": (job.finished_at - job.started_at).total_seconds(),
            "client_seconds": waited, "rows": job.processed_rows, "bytes": job.bytes_written}


def cold_start(task):
    # A fresh pool's first task pays for the child's start (its database connection,
    # lazy imports): measured, then left out of the runs. The second is a warm pool's.
    def missing():
        start = time.perf_counter()
        assert task.delay(-1).get(timeout=60) == "missing"
        return time.perf_counter() - start

    return {"first": missing(), "second": missing()}
"""

# Run in the project's shell: the plans, the table's statistics, then ours and
# \copy alternately (ours first). Every timestamp of ours is Django's
# timezone.now() on this host (the shell and the pool share a clock).
SIDE_BY_SIDE = r"""
import json, subprocess, time
from pathlib import Path
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from {slug}.exports import csv_export
from {slug}.exports.models import ExportJob, Transaction
from {slug}.exports.tasks import generate_csv_export

user = get_user_model().objects.get(username="demo")
table = Transaction._meta.db_table
path = Path(settings.MEDIA_ROOT) / "copy-to-file.csv"
path.parent.mkdir(parents=True, exist_ok=True)
select = csv_export.COPY_SELECT.format(table=table)
for value in (user.pk, 0, 2**62):
    select = select.replace("%s", str(value), 1)
copy_command = "\\copy (" + select + ") TO '" + str(path) + "' (FORMAT csv)"


def plans():
    # The first batch's plan as the planner makes it, and as the export runs it (plan pinned).
    batch = csv_export.KeysetBatch(user.pk, 0, settings.EXPORT_BATCH_SIZE, use_copy=True)
    select, params = batch.select()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + select, params)
        planner = [row[0] for row in cursor.fetchall()]
    return {{"planner": planner, "pinned": batch.plan().splitlines()}}


{helpers}

def copy_to_file():
    start = time.perf_counter()
    subprocess.run([*{psql}, "-qc", copy_command], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    size = path.stat().st_size + len(csv_export.HEADER_LINE)  # ours has a header line, this no header
    path.unlink()
    return {{"seconds": seconds, "bytes": size}}


connection.ensure_connection()
cold = cold_start(generate_csv_export)
plans = plans()
before = table_stats()
runs = {{"ours": [], "copy": []}}
for run in range({runs}):
    # Ours first in the first run (it meets the table as the load left it), then by turns.
    if run % 2 == 0:
        runs["ours"].append(timed_export())
        runs["copy"].append(copy_to_file())
    else:
        runs["copy"].append(copy_to_file())
        runs["ours"].append(timed_export())
print(json.dumps({{"plans": plans, "stats_before": before, "stats_after": table_stats(), "cold_start": cold, **runs}}))
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


def seconds_of(runs: list[dict], key: str = "seconds") -> str:
    return ", ".join(f"{run[key]:.2f}" for run in runs) + " s"


def vmhwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except FileNotFoundError:  # a pool process that was replaced
        pass
    return 0


def pool_pids(project: Baked, node: str | None = None) -> list[int]:
    """The pool processes of the running workers (of the node called ``node@...`` only, if given)."""
    inspect = (
        "from config.celery_app import app; import json; print(json.dumps(app.control.inspect(timeout=1).stats()))"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = json.loads(project.sh("python", "-c", inspect).stdout or "null") or {}
        nodes = [stats[name] for name in stats if node is None or name.split("@")[0].endswith(node)]
        if pids := [pid for stat in nodes for pid in stat["pool"]["processes"]]:
            return pids
    raise RuntimeError(f"the {node or 'worker'} pool did not answer")


def stop(worker) -> None:
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)


def psql(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PSQL, "-qc", command], check=True, capture_output=True, text=True)


def recreate_database(project: Baked) -> None:
    """A database of its own for each state: no rows, no statistics, no visibility map."""
    subprocess.run(["dropdb", *POSTGRES, "--if-exists", DATABASE], check=True, capture_output=True)
    subprocess.run(["createdb", *POSTGRES, DATABASE], check=True, capture_output=True)
    project.sh("python", "manage.py", "migrate", "--no-input")


def load(project: Baked, state: str, rows: int, others: int) -> dict[str, float]:
    """Bring the table into ``state``; the seconds each step took."""
    recreate_database(project)
    seconds = {}
    if state == "crowded":
        start = time.perf_counter()
        ids = last_dict(project.sh("python", "manage.py", "shell", "-c", CREATE_USERS.format(count=OTHER_USERS)).stdout)
        merchants = ", ".join("'" + name.replace("'", "''") + "'" for name in MERCHANTS)
        psql(
            OTHERS_SQL.format(
                ids=",".join(map(str, ids)),
                users=len(ids),
                rows=others,
                merchants=merchants,
                merchant_count=len(MERCHANTS),
            )
        )
        seconds["others"] = time.perf_counter() - start
        start = time.perf_counter()
        psql("ANALYZE exports_transaction")
        seconds["analyze"] = time.perf_counter() - start
    start = time.perf_counter()
    project.sh("python", "manage.py", "seed_demo_data", "--transactions", str(rows), "--orders", "0")
    seconds["seed"] = time.perf_counter() - start
    if state == "vacuumed":
        start = time.perf_counter()
        psql("VACUUM ANALYZE exports_transaction")
        seconds["vacuum"] = time.perf_counter() - start
    return seconds


def measure(project: Baked, rows: int, state: str, options) -> dict:
    figures = {"rows": rows, "state": state, "load_seconds": load(project, state, rows, options.others)}
    worker = project.popen("python", "-m", "config.worker", "worker-export")
    try:
        pids = pool_pids(project)
        script = SIDE_BY_SIDE.format(slug=project.slug, runs=options.runs, psql=json.dumps(PSQL), helpers=SHELL_HELPERS)
        result = last_dict(project.sh("python", "manage.py", "shell", "-c", script).stdout)
        peak_rss_mb = max(vmhwm_kb(pid) for pid in pids) / 1024
    finally:
        stop(worker)
    sizes = {run["bytes"] for run in result["ours"] + result["copy"]}
    if len(sizes) != 1:
        raise RuntimeError(f"{state}: not the same file: ours {result['ours']}, \\copy {result['copy']}")
    if {run["rows"] for run in result["ours"]} != {rows}:
        raise RuntimeError(f"{state}: ours exported {[run['rows'] for run in result['ours']]} rows, not {rows}")
    figures |= result
    figures["bytes"] = sizes.pop()
    figures["copy_median"] = median_by(result["copy"], "seconds")
    figures["ours_median"] = median_by(result["ours"], "seconds")
    figures["peak_rss_mb"] = peak_rss_mb

    if options.article and state == "vacuumed":
        article_run = last_dict(
            project.sh("python", "manage.py", "shell", "-c", ARTICLE.format(slug=project.slug)).stdout
        )
        figures["article"] = {"seconds": article_run["seconds"], "peak_rss_mb": article_run["maxrss_kb"] / 1024}
    return figures


def plan_nodes(lines: list[str], limit: int = 4) -> list[str]:
    """The plan's top node lines (not their conditions)."""
    return [line for line in lines if line is lines[0] or "->" in line][:limit]


def report(results: list[dict], options) -> None:
    autovacuum = psql_setting("autovacuum")
    print(f"\nCSV export against psql's \\copy, {os.cpu_count()} cores, local Postgres (autovacuum {autovacuum}), "
          "one disk for the media root")  # fmt: skip
    print("A database and a worker-export pool of their own per state; in each: ours, \\copy; \\copy, ours; ...")
    for state, text in STATES.items():
        print(f"  {state:<9} {text.format(others=options.others, users=OTHER_USERS)}")
    copy_s, share = "\\copy s", "% of \\copy"
    print(f"\n{'rows':>10} {'state':<9} {copy_s:>8} {'ours s':>8} {share:>10} {'peak RSS':>9}   every run")
    for r in results:
        copy, ours = r["copy_median"]["seconds"], r["ours_median"]["seconds"]
        print(f"{r['rows']:>10,} {r['state']:<9} {copy:>8.2f} {ours:>8.2f} {100 * copy / ours:>9.0f}% "
              f"{r['peak_rss_mb']:>6.0f} MB   ours {seconds_of(r['ours'])}; \\copy {seconds_of(r['copy'])}")  # fmt: skip
        print(f"{'':>10} {'':<9} {'':>8} {'':>8} {'':>10} {'':>9}   "
              f"ours' task (started_at ->) {seconds_of(r['ours'], 'task_seconds')}; "
              f"client (delay -> get) {seconds_of(r['ours'], 'client_seconds')}")  # fmt: skip
        cold = r["cold_start"]
        print(f"{'':>10} {'':<9} {'':>8} {'':>8} {'':>10} {'':>9}   "
              f"not counted: a fresh pool's first task {cold['first']:.2f} s, the next {cold['second']:.2f} s")  # fmt: skip
        if "article" in r:
            article = r["article"]
            print(f"{r['rows']:>10,} {'article':<9} {'':>8} {article['seconds']:>8.2f} "
                  f"{100 * copy / article['seconds']:>9.0f}% {article['peak_rss_mb']:>6.0f} MB   "
                  "offset iterator + StringIO, its own process (maxrss)")  # fmt: skip
    print(
        "\n(ours: job created -> finished_at, on a pool warmed by one task that reads no rows (its cost is shown); "
        "\\copy: the psql subprocess, wall; peak RSS: VmHWM of the pool processes)"
    )

    print("\nThe batch query (csv_export.COPY_BATCH, after key 0, EXPORT_BATCH_SIZE rows) and the table, per state:")
    for r in results:
        loaded = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in r["load_seconds"].items())
        print(f"\n{r['rows']:,} rows, {r['state']} ({r['bytes']:,} bytes; load: {loaded})")
        for moment in ("stats_before", "stats_after"):
            stats = r[moment]
            print(f"  {moment.replace('_', ' ')} the runs: reltuples {stats['reltuples']:,}, "
                  f"n_live_tup {stats['n_live_tup']:,}, n_mod_since_analyze {stats['n_mod_since_analyze']:,}, "
                  f"last_analyze {stats['last_analyze']}, last_autoanalyze {stats['last_autoanalyze']}, "
                  f"last_vacuum {stats['last_vacuum']}, last_autovacuum {stats['last_autovacuum']}")  # fmt: skip
        print("  as the planner would (no PIN_PLAN):")
        for line in plan_nodes(r["plans"]["planner"]):
            print(f"    {line}")
        print("  as the export runs it (KeysetBatch.plan(): PIN_PLAN first, in the batch's transaction):")
        for line in plan_nodes(r["plans"]["pinned"]):
            print(f"    {line}")


def psql_setting(name: str) -> str:
    return subprocess.run([*PSQL, "-Atc", f"SHOW {name}"], capture_output=True, text=True).stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--others", type=int, default=10_000_000, help="other users' rows in the crowded state")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, per row count and state (medians shown)")
    parser.add_argument("--article", action="store_true", help="also run the article's slow in-memory pattern")
    parser.add_argument("--states", nargs="+", choices=list(STATES), default=list(STATES), help="the table states")
    options = parser.parse_args()

    with baked_project(DATABASE, redis_db=9) as project:
        results = [measure(project, rows, state, options) for rows in options.rows for state in options.states]
        report(results, options)


if __name__ == "__main__":
    main()
