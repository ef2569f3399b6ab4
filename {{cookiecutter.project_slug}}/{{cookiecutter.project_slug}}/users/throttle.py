"""Limits on guessing passwords and on password-reset emails, counted in Redis.

A login (the site's and the admin's) is refused once its account, or the client
address it comes from, has used up its attempts: LOGIN_FAILURES_PER_ACCOUNT and
LOGIN_FAILURES_PER_CLIENT per LOGIN_THROTTLE_SECONDS. The attempt is counted
*before* the password is checked, so a burst of parallel guesses cannot all slip
in between a check and a count; a successful login gives its attempt back (the
account's count is cleared, the client's goes down by one). A password-reset
request is dropped, silently, past PASSWORD_RESETS_PER_ADDRESS (the address asked
for) or PASSWORD_RESETS_PER_CLIENT per PASSWORD_RESET_THROTTLE_SECONDS.

Each count lives in one Redis key that expires a window after the first hit that
made it: the limit lifts at most that long after it started, however often a
locked-out client keeps trying. The keys are shared by every web process (a
per-process cache would give each gunicorn worker its own limit) and need no
pruning. If Redis does not answer the limits are not enforced, and an error is
logged: an outage of the counters must not lock every user out of the site.
"""

import hashlib
import ipaddress
import logging
import unicodedata
from dataclasses import dataclass

import redis
from django.conf import settings
from django.http import HttpRequest

from ..core.redis_client import fail_fast_redis

logger = logging.getLogger(__name__)

# One round trip, atomic: count a hit on each key, start its window if it has none
# (a key left without a TTL would be a lockout for ever), return count and TTL.
_HIT = """
local result = {}
for i, key in ipairs(KEYS) do
    local count = redis.call('INCR', key)
    local ttl = redis.call('TTL', key)
    if ttl < 0 then
        ttl = tonumber(ARGV[i])
        redis.call('EXPIRE', key, ttl)
    end
    table.insert(result, count)
    table.insert(result, ttl)
end
return result
"""
# Take one hit back, never below zero and never on a key that has expired (DECR
# would create it with no TTL).
_REFUND = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
    return redis.call('DECR', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Limit:
    """At most ``count`` hits on ``key`` in a window of ``seconds`` that opens with the first hit."""

    key: str
    count: int
    seconds: int


def hit(*limits: Limit) -> int:
    """Count one hit on every limit. 0 if all of them allow it, else the seconds until the last one lifts."""
    try:
        client = fail_fast_redis()
        replies = client.register_script(_HIT)(
            keys=[limit.key for limit in limits], args=[limit.seconds for limit in limits]
        )
    except redis.RedisError:
        logger.exception("throttle: Redis did not answer, %s not enforced", ", ".join(limit.key for limit in limits))
        return 0
    counts_and_ttls = zip(replies[::2], replies[1::2], strict=True)
    exceeded = [ttl for limit, (count, ttl) in zip(limits, counts_and_ttls, strict=True) if count > limit.count]
    return max(exceeded, default=0)


def refund(limit: Limit) -> None:
    """Give back one hit (a success that should not count against the limit)."""
    try:
        client = fail_fast_redis()
        client.register_script(_REFUND)(keys=[limit.key])
    except redis.RedisError:
        logger.exception("throttle: Redis did not answer, %s not refunded", limit.key)


def clear(limit: Limit) -> None:
    try:
        fail_fast_redis().delete(limit.key)
    except redis.RedisError:
        logger.exception("throttle: Redis did not answer, %s not cleared", limit.key)


# --8<-- [start:client-address]
def client_address(request: HttpRequest | None) -> str:
    """The client's address, as the last of the TRUSTED_PROXY_COUNT proxies in front of Django saw it.

    Each proxy appends the address it was connected from to X-Forwarded-For, so the
    last TRUSTED_PROXY_COUNT entries were written by our proxies; anything before
    them was sent by the client and proves nothing (a limit keyed on it would be
    bypassed by changing a header). With no proxy (TRUSTED_PROXY_COUNT = 0), or a
    request that did not come through all of them, the address is REMOTE_ADDR.
    """
    if request is None:  # a form used outside a view
        return "unknown"
    address = request.META.get("REMOTE_ADDR", "")
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if entry.strip()]
    if proxies and len(forwarded) >= proxies:
        address = forwarded[-proxies]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(ip.ipv4_mapped)
        # An IPv6 subscriber gets a whole /64: counted address by address, one
        # machine could try 2**64 times as often. Count the network.
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
    # --8<-- [end:client-address]


def _digest(value: str) -> str:
    """A fixed-length key part for what the user typed; case and Unicode forms count as one."""
    return hashlib.sha256(unicodedata.normalize("NFKC", value).casefold().encode()).hexdigest()


def login_limits(request: HttpRequest | None, username: str) -> tuple[Limit, Limit]:
    """The account's limit and the client's, for a login attempt as ``username``."""
    seconds = settings.LOGIN_THROTTLE_SECONDS
    return (
        Limit(f"throttle:login:account:{_digest(username)}", settings.LOGIN_FAILURES_PER_ACCOUNT, seconds),
        Limit(f"throttle:login:client:{client_address(request)}", settings.LOGIN_FAILURES_PER_CLIENT, seconds),
    )


def reset_limits(request: HttpRequest | None, email: str) -> tuple[Limit, Limit]:
    """The address's limit and the client's, for a password-reset request for ``email``."""
    seconds = settings.PASSWORD_RESET_THROTTLE_SECONDS
    return (
        Limit(f"throttle:reset:address:{_digest(email)}", settings.PASSWORD_RESETS_PER_ADDRESS, seconds),
        Limit(f"throttle:reset:client:{client_address(request)}", settings.PASSWORD_RESETS_PER_CLIENT, seconds),
    )
