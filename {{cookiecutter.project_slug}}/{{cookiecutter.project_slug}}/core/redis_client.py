"""One Redis client per process for the project's own keys (metrics, the sandbox provider).

A client owns a connection pool: creating one per call opens a new connection per
call. Keyed by process id because prefork children must not share the parent's sockets.
"""

import os

import redis
from django.conf import settings

_clients: dict[int, redis.Redis] = {}


def shared_redis() -> redis.Redis:
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _clients[pid]
