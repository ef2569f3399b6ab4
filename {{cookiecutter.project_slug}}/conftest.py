"""Fixtures shared by the unit tests (in the apps) and the integration tests (tests/)."""

import pytest

from config.celery_app import app

{%- if cookiecutter.broker == "rabbitmq" %}

# Every test run gets a Redis database of its own (tests/redis_database.py) and a
# throwaway RabbitMQ vhost (tests/rabbitmq.py).
pytest_plugins = ["tests.redis_database", "tests.rabbitmq"]
{%- else %}

# Every test run gets a Redis database of its own (tests/redis_database.py).
pytest_plugins = ["tests.redis_database"]
{%- endif %}


@pytest.fixture
def eager_retries(monkeypatch):
    """Follow a task's retries eagerly, the way a worker would.

    With eager propagation on, an eagerly run task stops at its first retry; off,
    each retry runs at once (countdowns are ignored) until success or the last retry.
    """
    monkeypatch.setitem(app.conf, "task_eager_propagates", False)


@pytest.fixture
def sandbox():
    """The sandbox payment provider, whose plans (scripted failures) are cleared afterwards."""
    from {{ cookiecutter.project_slug }}.payments.providers import SandboxProvider

    provider = SandboxProvider()
    yield provider
    for key in provider.redis.scan_iter("payments:sandbox:plan:*"):
        provider.redis.delete(key)


@pytest.fixture
def fake_stripe():
    """A fake Stripe API on a local port (payments/tests/fake_stripe.py)."""
    from {{ cookiecutter.project_slug }}.payments.tests.fake_stripe import FakeStripe

    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def stripe_payments(fake_stripe, settings):
    """Payments go through StripeProvider and the real stripe client, to the fake Stripe."""
    from {{ cookiecutter.project_slug }}.payments.tests.fake_stripe import API_KEY, WEBHOOK_SECRET

    settings.STRIPE_SECRET_KEY = API_KEY
    settings.STRIPE_API_BASE = fake_stripe.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return fake_stripe
