"""One Redis client per process for the project's own keys (metrics, the sandbox provider).

A client owns a connection pool: creating one per call opens a new connection per
call. Keyed by process id because prefork children must not share the parent's sockets.

``shared_redis()`` rides out a blip: redis-py retries a failed command a few times,
with backoff. ``fail_fast_redis()`` is for readers that must answer quickly when
Redis is down (the /metrics scrape): one attempt, one-second timeouts.
"""

import os

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

_clients: dict[tuple[int, bool], redis.Redis] = {}


def _client(fail_fast: bool) -> redis.Redis:
    key = (os.getpid(), fail_fast)
    if key not in _clients:
        if fail_fast:
            options = {"socket_timeout": 1, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}
        else:
            options = {"socket_timeout": 2, "socket_connect_timeout": 2}
        _clients[key] = redis.Redis.from_url(settings.REDIS_URL, **options)
    return _clients[key]


def shared_redis() -> redis.Redis:
    return _client(fail_fast=False)


def fail_fast_redis() -> redis.Redis:
    return _client(fail_fast=True)
