"""Draw the headline figures of benchmarks/RESULTS.md into docs/img/benchmarks.png.

    .venv/bin/pip install matplotlib   # not a project requirement; run by hand
    .venv/bin/python benchmarks/chart.py

The numbers are parsed from RESULTS.md (the queue-isolation and CSV-export tables),
so re-running a benchmark, updating RESULTS.md and re-running this script keeps the
chart honest. It fails loudly if a table changed shape.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt  # only savefig is used: no display needed
from matplotlib.ticker import FuncFormatter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
OUTPUT = ROOT / "docs" / "img" / "benchmarks.png"

OURS, THEIRS = "#1b7f5a", "#c0392b"
UNITS = {"ms": 1e-3, "s": 1.0}


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under the ``## heading`` section."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip().strip("*").strip() for cell in row.strip("|").split("|")] for row in rows]
    return [row for row in cells[2:]]  # skip the header and the --- line


def seconds(cell: str) -> float:
    match = re.fullmatch(r"([\d.]+)\s*(ms|s)", cell)
    if not match:
        raise ValueError(f"not a duration: {cell!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def megabytes(cell: str) -> float:
    match = re.fullmatch(r"([\d.]+)\s*MB", cell)
    if not match:
        raise ValueError(f"not a size in MB: {cell!r}")
    return float(match.group(1))


def parse(text: str) -> dict:
    isolation = {}
    for setup, p50, p95, worst in table_rows(text, "Queue isolation"):
        key = "ours" if setup.startswith("ours") else "shared" if setup.startswith("shared") else None
        if key:
            isolation[key] = {"p50": seconds(p50), "p95": seconds(p95), "max": seconds(worst)}
    export = {}
    for rows, what, _seconds, _rate, _share, rss in table_rows(text, "CSV export"):
        key = "ours" if what.startswith("ours") else "article" if what.startswith("article") else None
        if key:
            export.setdefault(key, {})[int(rows.replace(",", ""))] = megabytes(rss)
    if set(isolation) != {"ours", "shared"} or set(export) != {"ours", "article"}:
        raise SystemExit(f"RESULTS.md tables changed shape: {isolation=} {export=}")
    return {"isolation": isolation, "export": export}


def human(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.1f} s"


def draw(figures: dict, output: Path) -> None:
    isolation, export = figures["isolation"], figures["export"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1.25]})

    # Left: p95 wait of password resets while six exports run, log scale.
    labels = ["blueprint pools\n(worker-high)", "one shared pool\n(Celery defaults)"]
    values = [isolation["ours"]["p95"], isolation["shared"]["p95"]]
    bars = left.bar(labels, values, color=[OURS, THEIRS], width=0.55)
    left.set_yscale("log")
    left.set_ylim(1e-3, 1e3)
    left.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y * 1000:g} ms" if y < 1 else f"{y:g} s"))
    left.set_ylabel("wait before start, p95 (log scale)")
    left.set_title("Password resets while 6 long exports run", fontsize=11)
    for bar, value in zip(bars, values, strict=True):
        left.annotate(human(value), (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 4),
                      textcoords="offset points", ha="center", fontweight="bold")  # fmt: skip
    left.grid(axis="y", which="major", alpha=0.3)

    # Right: peak RSS of the export worker at each size.
    sizes = sorted(export["ours"])
    positions = range(len(sizes))
    width = 0.38
    ours = [export["ours"][size] for size in sizes]
    theirs = [export["article"][size] for size in sizes]
    bars_ours = right.bar([p - width / 2 for p in positions], ours, width, color=OURS, label="blueprint export")
    bars_theirs = right.bar([p + width / 2 for p in positions], theirs, width, color=THEIRS,
                            label="article: offset + StringIO")  # fmt: skip
    right.set_xticks(list(positions), [f"{size:,} rows" for size in sizes])
    right.set_ylabel("peak worker memory (MB)")
    right.set_title("CSV export: peak memory of the worker", fontsize=11)
    right.set_ylim(0, max(theirs) * 1.18)
    for bar, value in [*zip(bars_ours, ours, strict=True), *zip(bars_theirs, theirs, strict=True)]:
        right.annotate(f"{value:.0f} MB", (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 4),
                       textcoords="offset points", ha="center", fontweight="bold")  # fmt: skip
    right.legend(loc="upper left", frameon=False)
    right.grid(axis="y", alpha=0.3)

    for axis in (left, right):
        axis.spines[["top", "right"]].set_visible(False)
    fig.text(0.5, 0.005, "2-core machine, local PostgreSQL and Redis; source: benchmarks/RESULTS.md",
             ha="center", fontsize=8, color="#555555")  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    print(f"wrote {output.relative_to(ROOT)}")


def main() -> None:
    draw(parse(RESULTS.read_text()), OUTPUT)


if __name__ == "__main__":
    sys.exit(main())
