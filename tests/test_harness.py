"""The template suite's own harness: where the baked suites it runs keep their Redis data."""

import os

import redis

from .conftest import REDIS, baked_suites_redis_database


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
