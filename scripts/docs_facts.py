"""The docs' tables of facts, generated from a baked project's topology and settings.

    .venv/bin/python scripts/docs_facts.py           # rewrite the tables in docs/
    .venv/bin/python scripts/docs_facts.py --check   # exit 1, showing the difference, if one is stale

A page marks a generated table with two HTML comments (Markdown shows neither):

    <!-- facts:pools -->
    | pool | queues | ...
    <!-- /facts:pools -->

Pool sizes, limits, queues, SLAs and beat entries are stated on several pages; typed
by hand they drift from the code the first time someone tunes a pool. Here the code
is the source: the template is baked with its defaults, the facts are read from that
project (``config.topology``, ``CELERY_BEAT_SCHEDULE``, the broker settings), and the
tables are written from them. ``tests/test_docs.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
DOCS = TEMPLATE / "docs"
BLOCK = re.compile(r"(<!-- facts:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /facts:(?P=name) -->)", re.DOTALL)

# Run inside the baked project (the settings to list as arguments): print what the
# tables are made of, as JSON.
READ_FACTS = """
import json
import sys

import django

django.setup()
from django.conf import settings
from config import topology

pools = [
    {"name": p.name, "queues": list(p.queues), "concurrency": p.concurrency, "prefetch": p.prefetch_multiplier,
     "soft": p.soft_time_limit, "hard": p.time_limit, "memory_kib": p.max_memory_per_child,
     "max_tasks": p.max_tasks_per_child, "shutdown": p.soft_shutdown_timeout}
    for p in topology.POOLS
]
beat = [
    {"name": name, "task": entry["task"], "queue": entry["options"]["queue"],
     "expires": entry["options"]["expire_seconds"],
     "schedule": {field: str(getattr(entry["schedule"], "_orig_" + field)) for field in
                  ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")}}
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
]
queues = [{"name": q, "sla": topology.SLA_SECONDS[q], "pool": topology.pool_for_queue(q).name} for q in topology.QUEUES]
transport = settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}
order = transport.get("queue_order_strategy", "round_robin")
values = {name: getattr(settings, name) for name in sys.argv[1:]}
values["CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout']"] = transport.get("visibility_timeout")
values["CONN_MAX_AGE"] = settings.DATABASES["default"]["CONN_MAX_AGE"]
print(json.dumps({"pools": pools, "beat": beat, "queues": queues, "queue_order": order, "settings": values}))
"""

# The settings whose values the celery-app page lists (those a reader tunes or relies on).
SETTINGS = (
    "CELERY_TASK_ACKS_LATE",
    "CELERY_TASK_REJECT_ON_WORKER_LOST",
    "CELERY_TASK_TRACK_STARTED",
    "CELERY_TASK_SEND_SENT_EVENT",
    "CELERY_WORKER_SEND_TASK_EVENTS",
    "CELERY_RESULT_EXTENDED",
    "CELERY_RESULT_EXPIRES",
    "CELERY_TASK_DEFAULT_QUEUE",
    "CELERY_DB_REUSE_MAX",
)


def read_facts() -> dict:
    """Bake the template with its defaults and read the facts from that project."""
    with tempfile.TemporaryDirectory() as workdir:
        project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=workdir))
        # Only what Python needs: the values are the code's defaults, not this shell's variables.
        env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "DJANGO_SETTINGS_MODULE": "config.settings.local"}
        result = subprocess.run([sys.executable, "-c", READ_FACTS, *SETTINGS], cwd=project, env=env, capture_output=True,
                                text=True, check=False, timeout=120)  # fmt: skip
        if result.returncode:
            raise SystemExit(f"could not read the facts from the baked project:\n{result.stderr}")
        return json.loads(result.stdout.splitlines()[-1])


def seconds(value: float) -> str:
    value = int(value) if float(value).is_integer() else value
    return f"{value // 60} min" if isinstance(value, int) and value >= 600 and value % 60 == 0 else f"{value} s"


def when(schedule: dict) -> str:
    """A crontab in words, for the shapes the schedule uses; anything else as cron fields."""
    minute, hour = schedule["minute"], schedule["hour"]
    every_day = all(schedule[field] == "*" for field in ("day_of_week", "day_of_month", "month_of_year"))
    if every_day and hour == "*" and minute == "*":
        return "every minute"
    if every_day and hour == "*" and re.fullmatch(r"\*/\d+", minute):
        return f"every {minute[2:]} minutes"
    if every_day and minute.isdigit() and hour.isdigit():
        return f"{int(hour):02d}:{int(minute):02d} daily"
    return "`" + " ".join(schedule[f] for f in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")) + "`"


def code(values) -> str:
    return ", ".join(f"`{value}`" for value in values)


def tables(facts: dict) -> dict[str, str]:
    pools = [
        "| pool | queues | concurrency | prefetch | soft / hard limit | memory cap | max tasks | soft shutdown |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
        *(
            f"| `{p['name']}` | {code(p['queues'])} | {p['concurrency']} | {p['prefetch']} | "
            f"{seconds(p['soft'])} / {seconds(p['hard'])} | {p['memory_kib'] // 1000} MB | {p['max_tasks']} | "
            f"{seconds(p['shutdown'])} |"
            for p in facts["pools"]
        ),
    ]
    queues = [
        "| queue | consumed by | SLA (longest wait before a task starts) |",
        "| --- | --- | ---: |",
        *(f"| `{q['name']}` | `{q['pool']}` | {seconds(q['sla'])} |" for q in facts["queues"]),
    ]
    beat = [
        "| entry | task | when | queue | expires after |",
        "| --- | --- | --- | --- | ---: |",
        *(
            f"| `{e['name']}` | `{e['task'].split('.', 1)[1]}` | {when(e['schedule'])} | `{e['queue']}` | "
            f"{seconds(e['expires'])} |"
            for e in facts["beat"]
        ),
    ]
    order = [f'Redis transport option `queue_order_strategy`: `"{facts["queue_order"]}"`.']
    settings = [
        "| setting | value |",
        "| --- | --- |",
        *(f"| `{name}` | `{value!r}` |" for name, value in facts["settings"].items()),
    ]
    return {name: "\n".join(lines) + "\n" for name, lines in
            {"pools": pools, "queues": queues, "beat": beat, "queue-order": order, "settings": settings}.items()}  # fmt: skip


def render(text: str, generated: dict[str, str], page: str) -> str:
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in generated:
            raise SystemExit(f"{page}: unknown facts block {name!r}; known: {', '.join(generated)}")
        return match.group(1) + generated[name] + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the pages' directory (default: docs/)")
    options = parser.parse_args()
    generated = tables(read_facts())
    stale = []
    for page in sorted(options.docs.glob("*.md")):
        text = page.read_text()
        new = render(text, generated, page.name)
        if new == text:
            continue
        stale.append(page.name)
        if options.check:
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(keepends=True), new.splitlines(keepends=True), f"docs/{page.name}", "generated"))  # fmt: skip
        else:
            page.write_text(new)
    if stale and options.check:
        print(f"\nstale tables in {', '.join(stale)}: run .venv/bin/python scripts/docs_facts.py", file=sys.stderr)
        return 1
    if stale:
        print(f"rewrote the tables in {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
