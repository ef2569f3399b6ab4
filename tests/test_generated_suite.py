"""The baked project's own test suite passes against real Postgres, Redis and RabbitMQ.

It includes integration tests that start the three worker pools from the
Procfile and check that each example task runs on the pool of its queue. CI=1
is passed down so that the baked suite fails, never skips, when a service is
missing. The RabbitMQ bake runs its tests in a throwaway vhost (its conftest
creates and deletes it).

The three suites run two at a time, longest first. One suite keeps about one of
CI's two cores busy (a load average of 0.9 while it runs), so two side by side take
little longer than one, and the three fit in CI's hour. The default bake's suite
uses this machine's Redis, as the README's test command does; the others each get
a redis-server of their own, so that no two suites running at once share a Redis
(their isolation tests pick empty databases of their server).
"""

import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from .conftest import assert_ok, redis_server, run

SUITE_MATRIX = [
    {},
    # Answers that break a project that pastes them into code: quotes of both kinds, a
    # colon, commas, an ampersand, curly quotes and accents (tests/test_answers.py has more).
    {
        "project_name": 'Wídget "Works": Tom’s, A&B — Ünïcode',
        "description": 'Exports, payments & "emails": all of it.',
        "author_name": 'Zoë "Z" O\'Brien & Co',
        "python_version": "3.11",
        "ci": "none",
        "storage": "s3",
        # Also the one bake whose suite proves the traces (tests/test_telemetry_integration.py).
        "opentelemetry": "yes",
        # And Kubernetes manifests (tests/test_kubernetes.py), for the Redis broker and S3.
        "kubernetes": "yes",
    },
    # Also the bake without Sentry: its suite must pass with no sentry-sdk code at all.
    # Kubernetes with RabbitMQ's scaler and the shared media volume.
    {
        "project_name": "Rabbit Shop",
        "python_version": "3.13",
        "broker": "rabbitmq",
        "sentry": "no",
        "kubernetes": "yes",
    },
]


# Tests of the Redis broker and of process lifecycles (signals, restarts, a broker
# outage, beat's clock) that the default bake runs: the widget bake has the same
# broker and the same processes, and what it changes (names, S3, OpenTelemetry,
# Kubernetes) none of them touches. Deselected there to keep CI within its hour
# (about 3.5 minutes). The RabbitMQ bake runs everything but the health check's
# outage test, which stages the outage with a throwaway Redis as the broker in
# every bake: the same code path as the default bake's.
OUTAGE_PROBE = "tests/test_health_integration.py::test_a_pool_waiting_for_its_broker_passes_its_probe_and_recovers"
SAME_AS_IN_THE_DEFAULT_BAKE = [
    "tests/test_beat_integration.py::test_schedules_are_synced_and_the_canary_fires_within_its_interval",
    "tests/test_payments_integration.py::test_sigterm_lets_a_running_payment_finish",
    OUTAGE_PROBE,
    "tests/test_isolation_integration.py::test_a_test_run_leaves_the_developers_stack_alone",
    "tests/test_autoreload_integration.py",
]
DESELECTED = {"widget_hostile_names-s3": SAME_AS_IN_THE_DEFAULT_BAKE, "rabbit_shop-rabbitmq": [OUTAGE_PROBE]}
IDS = ["default", "widget_hostile_names-s3", "rabbit_shop-rabbitmq"]


LANES = 2  # suites running at once
LONGEST_FIRST = ["default", "rabbit_shop-rabbitmq", "widget_hostile_names-s3"]  # 539, 463, 411 s alone
assert sorted(LONGEST_FIRST) == sorted(IDS), "a new bake needs its place in LONGEST_FIRST"
SUITE_TIMEOUT = 1800  # seconds; one takes about 10 minutes alone


def suite_command(bake: str) -> list[str]:
    deselect = [arg for test in DESELECTED.get(bake, []) for arg in ("--deselect", test)]
    return ["python", "-m", "pytest", "--create-db", "-p", "no:cacheprovider", "-q", *deselect]


def suite_environment(result, services, redis_url: str) -> dict[str, str]:
    slug = result.context["project_slug"]
    host, port = services["postgres"]
    user = os.environ.get("PGUSER", "postgres")
    password = f":{os.environ['PGPASSWORD']}" if os.environ.get("PGPASSWORD") else ""
    env = {"CI": "1", "DATABASE_URL": f"postgres://{user}{password}@{host}:{port}/{slug}", "REDIS_URL": redis_url}
    if result.context["broker"] == "rabbitmq":
        rabbit_host, rabbit_port = services["rabbitmq"]
        env["CELERY_BROKER_URL"] = f"amqp://guest:guest@{rabbit_host}:{rabbit_port}//"
    return env


@pytest.fixture(scope="module")
def suites(request, cookies_session, services, tmp_path_factory) -> dict[str, tuple]:
    """Bake the projects this run selected, then run their suites, LANES at a time.

    Returns, per bake, the bake's result and a Future of its suite's run. The bakes
    happen here, one after the other (cookiecutter changes the working directory
    while it runs hooks); only the suites, subprocesses, run side by side.
    """
    selected = {item.callspec.params["bake"] for item in request.session.items if item.module is request.module}
    baked = {
        bake: cookies_session.bake(extra_context=context)
        for context, bake in zip(SUITE_MATRIX, IDS, strict=True)
        if bake in selected
    }
    redis_host, redis_port = services["redis"]
    with ExitStack() as stack:
        # The Redis servers outlive the executor: it is shut down (waiting for every suite) first.
        redis_urls = {
            bake: f"redis://{redis_host}:{redis_port}/0"
            if bake == "default"
            else stack.enter_context(redis_server(tmp_path_factory.mktemp(f"redis-{bake}")))
            for bake in baked
        }
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="suite"))
        runs: dict[str, Future] = {}
        for bake in [bake for bake in LONGEST_FIRST if bake in baked]:
            result = baked[bake]
            if result.exit_code == 0:
                env = suite_environment(result, services, redis_urls[bake])
                runs[bake] = executor.submit(run, suite_command(bake), result.project_path, env, SUITE_TIMEOUT)
        yield {bake: (result, runs.get(bake)) for bake, result in baked.items()}


@pytest.mark.slow
@pytest.mark.parametrize("bake", IDS)
def test_baked_project_suite_passes(suites, bake):
    result, run_of_the_suite = suites[bake]
    assert result.exit_code == 0, result.exception
    for test in DESELECTED.get(bake, []):
        path, _, name = test.partition("::")
        # A renamed test or file must fail here, not silently run in every bake again.
        assert name in (result.project_path / path).read_text(), f"{test} is not in the baked project"
    suite = run_of_the_suite.result()
    assert_ok(suite)
    assert " passed" in suite.stdout and "skipped" not in suite.stdout, suite.stdout
    assert ("deselected" in suite.stdout) == bool(DESELECTED.get(bake)), suite.stdout
