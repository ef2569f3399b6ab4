"""The template suite's own harness: where the baked suites keep their Redis data, and ``scripts/test``."""

import os
import subprocess

import pytest
import redis

from .conftest import REDIS, TEMPLATE, baked_suites_redis_database, free_port


def test_baked_suites_avoid_a_redis_database_someone_else_uses(services, monkeypatch):
    chosen = int(os.environ["TEST_REDIS_DB"])
    client = redis.Redis(*REDIS, db=chosen)
    monkeypatch.delenv("TEST_REDIS_DB")
    assert client.dbsize() == 0, "the baked suites' database holds keys between two baked runs"
    assert baked_suites_redis_database() == chosen  # still free: chosen again
    client.set("someone-else:key", "theirs")  # e.g. a process left over from an interrupted run
    try:
        other = baked_suites_redis_database()
        assert other not in (0, chosen)
        assert redis.Redis(*REDIS, db=other).dbsize() == 0
    finally:
        client.delete("someone-else:key")


def test_test_redis_db_in_the_environment_wins(monkeypatch):
    monkeypatch.setenv("TEST_REDIS_DB", "7")
    assert baked_suites_redis_database() == 7


# What scripts/test could call to change the system; `docker` answers no daemon.
CHANGES_THE_SYSTEM = ["apt-get", "dockerd", "pg_ctlcluster", "redis-server", "rabbitmq-server"]


@pytest.mark.parametrize("how", [["--no-install"], ["BLUEPRINT_NO_INSTALL=1"]], ids=["flag", "variable"])
def test_scripts_test_without_system_changes_installs_and_starts_nothing(tmp_path, how):
    """`./scripts/test --no-install`: no apt, no daemon started, nothing written outside the
    checkout; what is missing is named, and the tests run (here: collected) without it.

    Every tool the script could call to change the system is a stub that records its call;
    the services' ports are closed, so without the flag the script would start them.
    """
    stubs, calls = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir()
    for name in CHANGES_THE_SYSTEM:
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
    (stubs / "docker").write_text("#!/bin/sh\nexit 1\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    closed = [str(free_port()) for _ in range(3)]
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "BLUEPRINT_NO_INSTALL")}
    env |= {
        "PATH": f"{stubs}{os.pathsep}{env['PATH']}",
        "HOME": str(tmp_path / "home"),
        "POSTGRES_PORT": closed[0],
        "REDIS_PORT": closed[1],
        "RABBITMQ_PORT": closed[2],
    }
    flags = [arg for arg in how if arg.startswith("--")]
    env |= dict(arg.split("=", 1) for arg in how if "=" in arg)
    result = subprocess.run(
        [str(TEMPLATE / "scripts" / "test"), *flags, "--collect-only", "-q", "tests/test_harness.py"],
        cwd=TEMPLATE, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    assert not calls.exists(), f"changed the system: {calls.read_text()}"
    assert not (tmp_path / "home").exists()  # no ~/.docker/cli-plugins link
    assert f"PostgreSQL on 127.0.0.1:{closed[0]}" in result.stderr
    assert "a running Docker daemon" in result.stderr
    assert "The tests that need them will be skipped." in result.stderr
    assert "test_scripts_test_without_system_changes" in result.stdout  # and pytest ran
