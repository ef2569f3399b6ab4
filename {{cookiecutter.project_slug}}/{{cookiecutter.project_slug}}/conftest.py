import pytest

from config.celery_app import app


@pytest.fixture
def eager_retries(monkeypatch):
    """Follow a task's retries eagerly, the way a worker would.

    With eager propagation on, an eagerly run task stops at its first retry; off,
    each retry runs at once (countdowns are ignored) until success or the last retry.
    """
    monkeypatch.setitem(app.conf, "task_eager_propagates", False)
