"""Settings for the test suite.

Unit tests run tasks eagerly (in-process). Integration tests under ``tests/`` switch
eager mode off and talk to real worker pools started from the Procfile, which load
these same settings (they get the test database through ``DATABASE_URL``).
"""

from urllib.parse import parse_qsl, urlencode, urlsplit

from .base import *  # noqa: F403
from .base import CELERY_BROKER_URL, CELERY_RESULT_BACKEND, REDIS_URL, env

# Tests never share Redis with a running `make dev`. Everything they write (queues,
# results, metrics, the sandbox provider's keys, locks) goes to a database of their
# own on REDIS_URL's server: TEST_REDIS_DB, 15 unless set. Redis scopes Celery's
# broadcasts (ping, inspect, events) by database too. tests/redis_database.py checks
# that the database is the suite's before the first test and empties it after the last.
DEVELOPMENT_REDIS_URL = REDIS_URL
TEST_REDIS_DB = env.int("TEST_REDIS_DB", default=15)


def on_test_database(url: str) -> str:
    """``url`` with its Redis database replaced by TEST_REDIS_DB; other URLs (amqp://) unchanged."""
    parts = urlsplit(url)
    if parts.scheme == "unix":  # unix:///run/redis.sock?db=0
        query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
        return f"unix://{parts.netloc}{parts.path}?{urlencode([*query, ('db', TEST_REDIS_DB)])}"
    if parts.scheme not in ("redis", "rediss"):
        return url
    return parts._replace(path=f"/{TEST_REDIS_DB}").geturl()


REDIS_URL = on_test_database(REDIS_URL)
CELERY_RESULT_BACKEND = on_test_database(CELERY_RESULT_BACKEND)
CELERY_BROKER_URL = on_test_database(CELERY_BROKER_URL)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="test-only-secret-key-not-for-production")
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
# Fast hashing: the suite creates many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In memory (``mail.outbox``). Processes that other processes must see the mail of
# (the chaos soak counts every email its worker pools sent) use the file backend:
# DJANGO_EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend and
# DJANGO_EMAIL_FILE_PATH, one file per message.
EMAIL_BACKEND = env("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
EMAIL_FILE_PATH = env("DJANGO_EMAIL_FILE_PATH", default="")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Small batches and a short lease, so that tests see many checkpoints and a dead
# runner's lease expires in seconds. Worker pools started by tests get the same.
EXPORT_BATCH_SIZE = env.int("EXPORT_BATCH_SIZE", default=500)
EXPORT_LEASE_SECONDS = env.int("EXPORT_LEASE_SECONDS", default=3)
# Two users per batch: a handful of users makes a fan-out of several batch tasks.
STATEMENT_BATCH_SIZE = env.int("STATEMENT_BATCH_SIZE", default=2)

# Same mechanism, shorter waits: retries in tests back off 1-2 s, not minutes.
TASK_RETRY_POLICY = {"max_retries": 3, "retry_backoff": 1, "retry_backoff_max": 2, "default_retry_delay": 1}

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-always-eager
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-eager-propagates
CELERY_TASK_EAGER_PROPAGATES = True

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#imports
# Task modules that only the test suite sends (a module in tests/), for the pools a test
# starts with CELERY_TEST_TASK_MODULES set. The apps' own tasks.py are found anyway.
CELERY_IMPORTS = env.list("CELERY_TEST_TASK_MODULES", default=[])

# Serve static files straight from the apps; no collectstatic needed.
WHITENOISE_AUTOREFRESH = True
