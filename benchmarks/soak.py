"""The chaos soak, long: 30 minutes (or more) of traffic and random faults, then every invariant.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--seed N]

Runs ``tests/drills/test_soak.py`` (a baked project, its own Redis and database,
every Procfile process) with a random seed unless one is given, and prints the
seed, the faults injected, the operations completed and the invariant results.
Replay a failing run with ``--seed`` and the same ``--minutes``. Needs what the
drills need: Postgres on 127.0.0.1:5432 and a ``redis-server`` binary.
Not part of the test suite (CI runs the 75-second version).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed)")
    parser.add_argument("--quiet-seconds", type=float, default=600, help="longest wait for things to settle")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos soak: seed {seed}, {args.minutes:g} minutes", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    report_path = run_dir / "report.json"
    # pytest's own temporary directories keep only the last three runs: the
    # process logs of a failed soak must outlive the next test run.
    basetemp = run_dir / "pytest"
    env = os.environ | {
        "CI": "1",  # missing Postgres or redis-server fails instead of skipping
        "SOAK_SEED": str(seed),
        "SOAK_SECONDS": str(args.minutes * 60),
        "SOAK_QUIET_SECONDS": str(args.quiet_seconds),
        "SOAK_REPORT": str(report_path),
    }
    started = time.monotonic()
    test = "tests/drills/test_soak.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", f"--basetemp={basetemp}", test], cwd=ROOT, env=env, check=False
    )
    elapsed = time.monotonic() - started
    if not report_path.exists():
        print(f"no report: the soak did not get to its invariants (pytest exit {result.returncode})")
        return 1
    report = json.loads(report_path.read_text())
    print()
    print(f"seed                  {report['seed']}")
    print(f"load                  {report['seconds'] / 60:.1f} min; quiet period {report['quiet_seconds']:.0f} s")
    print(f"faults injected       {report['fault_count']}")
    for fault, count in sorted(report["faults"].items(), key=lambda item: -item[1]):
        print(f"  {count:5d}  {fault}")
    print(f"operations            {sum(report['operations'].values())}")
    for operation, count in sorted(report["operations"].items()):
        print(f"  {count:5d}  {operation}")
    print(f"outcomes              {json.dumps(report['outcomes'])}")
    print(f"emails sent           {report['emails']}")
    print(f"settled               {report['settled']}")
    print(f"invariant violations  {len(report['violations'])}")
    for violation in report["violations"]:
        print(f"  - {violation}")
    print(f"fault log             {report['fault_log']}")
    print(f"load log              {report['load_log']}")
    print(f"process logs          {basetemp} (logs*/<process>.log)")
    print(f"wall time             {elapsed / 60:.1f} min")
    return 0 if result.returncode == 0 and not report["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
