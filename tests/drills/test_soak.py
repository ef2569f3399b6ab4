"""The chaos soak, short: 75 seconds of traffic and faults with a fixed seed, then every invariant.

``benchmarks/soak.py`` runs the same test for 30 minutes or more with a random
seed (SOAK_SECONDS, SOAK_SEED; SOAK_REPORT names a file for the JSON report).
A failure prints the seed, the fault log and the load log: run it again with
that seed to replay the same faults and operations (docs/chaos-soak.md).
"""

import json
import os

import pytest

from .soak import Soak

pytestmark = pytest.mark.drill

SEED = 20261122
SECONDS = 75


def test_chaos_soak_loses_nothing_and_doubles_nothing(project, pools, redis_server, tmp_path_factory):
    soak = Soak(
        project,
        pools,
        redis_server,
        seed=int(os.environ.get("SOAK_SEED", SEED)),
        seconds=float(os.environ.get("SOAK_SECONDS", SECONDS)),
        quiet_seconds=float(os.environ.get("SOAK_QUIET_SECONDS", 240)),
        workdir=tmp_path_factory.mktemp("soak"),
    )
    report = soak.run()
    print(json.dumps(report, indent=2))
    if os.environ.get("SOAK_REPORT"):
        with open(os.environ["SOAK_REPORT"], "w") as handle:
            json.dump(report, handle, indent=2)
    # The soak must have done what it claims: faults of many kinds, and traffic of every kind.
    assert len(report["fault_kinds"]) >= 6, report["faults"]
    assert set(report["operations"]) >= {"checkout", "scripted-payment", "reset", "export"}, report["operations"]
    assert report["violations"] == [], f"seed {report['seed']}: {len(report['violations'])} violations"
