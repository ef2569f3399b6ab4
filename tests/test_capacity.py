"""benchmarks/capacity.py: Erlang C, the p95 wait, pool sizing and the compose-scale check."""

import importlib.util
import math
import sys

import pytest

from .conftest import TEMPLATE

_spec = importlib.util.spec_from_file_location("capacity", TEMPLATE / "benchmarks" / "capacity.py")
capacity = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = capacity
_spec.loader.exec_module(capacity)

SLA = {"high": 1.0, "default": 10.0, "low": 300.0, "export": 60.0}
HIGH = capacity.PoolSpec("worker-high", ("high",), concurrency=4, min_replicas=1, max_replicas=10)
DEFAULT = capacity.PoolSpec("worker-default", ("default", "low"), concurrency=2, min_replicas=1, max_replicas=6)
EXPORT = capacity.PoolSpec("worker-export", ("export",), concurrency=1, min_replicas=0, max_replicas=4)


# ------------------------------------------------------------------------------
# Erlang C and the wait
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9, 0.99])
def test_erlang_c_of_one_server_is_the_utilisation(rho):
    assert capacity.erlang_c(1, rho) == pytest.approx(rho)


def test_erlang_c_textbook_values():
    assert capacity.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # c = 3, a = 2: B = (8/6) / (1 + 2 + 2 + 8/6) = 4/19; C = 3B / (3 - 2(1 - B)) = 4/9.
    assert capacity.erlang_c(3, 2.0) == pytest.approx(4 / 9)
    assert capacity.erlang_b(2, 1.0) == pytest.approx(0.2)


def test_erlang_c_is_one_at_or_over_capacity_and_zero_without_load():
    assert capacity.erlang_c(4, 4.0) == 1.0
    assert capacity.erlang_c(4, 7.5) == 1.0
    assert capacity.erlang_c(4, 0.0) == 0.0


def test_erlang_c_does_not_overflow_for_thousands_of_servers():
    # 5000! overflows a float; the recurrence does not. Near 95 % utilisation of a large pool,
    # about a third of arrivals still wait (square-root staffing: beta = 50 / sqrt(4950) ~ 0.71).
    value = capacity.erlang_c(5000, 4950.0)
    assert 0.2 < value < 0.5
    assert capacity.erlang_c(5000, 4000.0) < 1e-20


def test_p95_wait_formula():
    # c = 2, a = 1, S = 1 s: P(W > t) = 1/3 x exp(-t), so the p95 is ln((1/3) / 0.05) s.
    assert capacity.wait_percentile(2, 1.0, 1.0) == pytest.approx(math.log(20 / 3))
    # Scales with the duration.
    assert capacity.wait_percentile(2, 1.0, 3.0) == pytest.approx(3 * math.log(20 / 3))
    # At the percentile, exactly 5 % wait longer.
    t = capacity.wait_percentile(3, 2.0, 0.5)
    assert capacity.late_share(3, 2.0, 0.5, t) == pytest.approx(0.05)
    # Fewer than 5 % wait at all: the p95 is 0; overloaded: unbounded.
    assert capacity.wait_percentile(10, 1.0, 1.0) == 0.0
    assert capacity.wait_percentile(2, 2.0, 1.0) == math.inf


# ------------------------------------------------------------------------------
# Sizing
# ------------------------------------------------------------------------------
def test_the_size_found_is_the_smallest_that_meets_the_sla():
    plan = capacity.size_pool(HIGH, {"high": (60.0, 0.2)}, SLA)
    assert plan.p95 <= SLA["high"] and plan.late <= 0.05 and plan.utilisation < 1
    smaller = (plan.replicas - 1) * HIGH.concurrency
    assert not capacity.meets_sla(smaller, plan.erlangs, plan.duration, SLA["high"])


def test_more_load_never_needs_fewer_replicas():
    for duration in (0.05, 0.2, 2.0):
        sizes = [capacity.size_pool(HIGH, {"high": (rate, duration)}, SLA).replicas for rate in range(0, 400, 7)]
        assert sizes == sorted(sizes), duration
        assert sizes[-1] > sizes[0]


def test_longer_tasks_never_need_fewer_replicas():
    sizes = [capacity.size_pool(EXPORT, {"export": (0.01, duration)}, SLA).replicas for duration in range(10, 600, 10)]
    assert sizes == sorted(sizes)


def test_a_pool_that_needs_more_than_max_replicas_is_flagged():
    plan = capacity.size_pool(HIGH, {"high": (400.0, 0.2)}, SLA)  # 80 erlangs, at most 40 processes
    assert plan.over_max and plan.replicas > HIGH.max_replicas
    assert plan.p95_at_max == math.inf
    assert any("WARNING" in note and "max_replicas" in note for note in plan.notes)
    report = capacity.render_plans({"high": (400.0, 0.2)}, [plan], SLA)
    assert "over max" in report and "WARNING" in report
    assert not capacity.size_pool(HIGH, {"high": (20.0, 0.05)}, SLA).over_max


def test_high_is_never_sized_zero():
    for load in ({}, {"high": (0.0, 0.1)}, {"high": (0.001, 0.01)}):
        assert capacity.size_pool(HIGH, load, SLA).replicas >= 1


def test_zero_replicas_only_without_load_and_with_min_replicas_zero():
    assert capacity.size_pool(EXPORT, {}, SLA).replicas == 0
    assert capacity.size_pool(EXPORT, {"export": (0.0001, 60.0)}, SLA).replicas >= 1
    plan = capacity.size_pool(EXPORT, {}, SLA, cold_start=90.0)
    assert any("cold start" in note and "90 s" in note for note in plan.notes)


def test_a_pool_of_several_queues_takes_their_combined_load_and_the_strictest_sla():
    load = {"default": (4.0, 0.5), "low": (0.5, 4.0)}
    plan = capacity.size_pool(DEFAULT, load, SLA)
    assert (plan.sla_queue, plan.sla) == ("default", 10.0)
    assert plan.erlangs == pytest.approx(4.0) and plan.rate == pytest.approx(4.5)
    assert plan.duration == pytest.approx(4.0 / 4.5)
    assert any("strictest SLA" in note and "before the next `low`" in note for note in plan.notes)
    # Load on low alone is still held to default's SLA: a 100 s low task pushes the pool up,
    # which low's own 300 s SLA would not.
    heavy_low = capacity.size_pool(DEFAULT, {"low": (0.02, 100.0)}, SLA)
    as_if_alone = capacity.PoolSpec("low-only", ("low",), 2, 1, 6)
    assert heavy_low.sla == 10.0
    assert heavy_low.replicas > capacity.size_pool(as_if_alone, {"low": (0.02, 100.0)}, SLA).replicas


def test_the_topology_is_read_with_fallbacks():
    topology = capacity.load_topology()
    specs = {spec.name: spec for spec in capacity.pool_specs(topology)}
    assert set(specs) == {"worker-high", "worker-default", "worker-export"}
    assert specs["worker-high"].concurrency == 4 and specs["worker-high"].min_replicas >= 1
    plans, unserved = capacity.plan_all(capacity.DEMO_LOAD, topology)
    assert unserved == [] and all(plan.replicas >= 1 for plan in plans)


def test_load_options_parse_and_reject_nonsense():
    assert capacity.parse_load("high=20:0.05") == ("high", (20.0, 0.05))
    assert capacity.parse_load("export=1e-2:120") == ("export", (0.01, 120.0))
    for bad in ("high=20", "high:20:0.05", "high=20:0", "high=x:1"):
        with pytest.raises(ValueError):
            capacity.parse_load(bad)
    with pytest.raises(ValueError, match="unknown queue"):
        capacity.plan_all({"celery": (1.0, 1.0)})


def test_load_from_a_json_file(tmp_path):
    path = tmp_path / "load.json"
    path.write_text('{"high": {"rate": 20, "duration": 0.05}, "export": [0.01, 120]}')
    assert capacity.load_json(path) == {"high": (20.0, 0.05), "export": (0.01, 120.0)}


# ------------------------------------------------------------------------------
# The compose-scale check, against the figures in RESULTS.md
# ------------------------------------------------------------------------------
def test_compose_scale_check_reproduces_one_replica_and_three_within_tolerance():
    measurement = capacity.parse_compose_scale(capacity.RESULTS.read_text())
    assert measurement.exports == 6 and {1, 3} <= set(measurement.seconds)
    per_export, checks = capacity.check_compose_scale(measurement, cores=2)
    by_replicas = {check.replicas: check for check in checks}
    assert per_export == pytest.approx(measurement.seconds[1] / 6)
    assert by_replicas[1].predicted == pytest.approx(measurement.seconds[1], rel=1e-12)
    three = by_replicas[3]
    assert three.predicted == pytest.approx(2 * per_export)  # ceil(6 / 3) exports each
    assert three.within_tolerance, (three.predicted, three.measured)
    # The two bounds bracket the measurement: no machine sharing below, 2 shared cores above.
    assert three.predicted <= three.measured <= three.capped


def test_compose_scale_check_fails_on_a_different_measurement():
    text = capacity.RESULTS.read_text()
    section = text.split(capacity.COMPOSE_SCALE_SECTION, 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| 3 | 3 |"))
    slower = text.replace(row, "| 3 | 3 | 9.0 s | 1.60x |")
    faster = text.replace(row, "| 3 | 3 | 4.0 s | 3.60x |")
    for changed in (slower, faster):
        _, checks = capacity.check_compose_scale(capacity.parse_compose_scale(changed))
        assert not next(check for check in checks if check.replicas == 3).within_tolerance
    with pytest.raises(ValueError):
        capacity.parse_compose_scale(text.replace(capacity.COMPOSE_SCALE_SECTION, "## Something else"))


def test_the_script_prints_the_report_and_the_check(capsys):
    assert capacity.main(["--load", "high=20:0.05", "--load", "export=0.01:120"]) == 0
    report = capsys.readouterr().out
    assert "### `worker-high`" in report and "| 1 | `high` 1 s |" in report
    assert capacity.main(["--check-compose-scale", "--cores", "2"]) == 0
    check = capsys.readouterr().out
    one = capacity.parse_compose_scale(capacity.RESULTS.read_text()).seconds[1]
    assert f"| 1 | {one:.3g} s | {one:.3g} s | +0.0% | {one:.3g} s | +0.0% |" in check
    assert "| 3 |" in check and "3 replica(s) ok" in check


def test_batch_wall_time_counts_whole_rounds():
    # 6 exports on 4 replicas: two rounds, the second with 2 exports; cores cap the parallelism.
    assert capacity.batch_wall_time(6, 4, 2.4) == pytest.approx(4.8)
    assert capacity.batch_wall_time(6, 6, 2.4) == pytest.approx(2.4)
    assert capacity.batch_wall_time(6, 4, 2.4, cores=2) == pytest.approx(7.2)
    assert capacity.batch_wall_time(6, 1, 2.4, cores=2) == pytest.approx(14.4)
