import pytest

from ...core.redis_client import shared_redis


@pytest.fixture(autouse=True)
def throttle_counts():
    """Every test starts with no login or reset attempts counted, and leaves none (they live in Redis)."""
    client = shared_redis()  # the test run's database, even after a test points REDIS_URL elsewhere

    def clear():
        for key in client.scan_iter("throttle:*"):
            client.delete(key)

    clear()
    yield
    clear()
