"""Settings for the test suite.

Unit tests run tasks eagerly (in-process). Integration tests under ``tests/`` switch
eager mode off and talk to real worker pools started from the Procfile, which load
these same settings (they get the test database through ``DATABASE_URL``).
"""

from .base import *  # noqa: F403
from .base import env

SECRET_KEY = env("DJANGO_SECRET_KEY", default="test-only-secret-key-not-for-production")
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
# Fast hashing: the suite creates many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Small batches and a short lease, so that tests see many checkpoints and a dead
# runner's lease expires in seconds. Worker pools started by tests get the same.
EXPORT_BATCH_SIZE = env.int("EXPORT_BATCH_SIZE", default=500)
EXPORT_LEASE_SECONDS = env.int("EXPORT_LEASE_SECONDS", default=3)

# Same mechanism, shorter waits: retries in tests back off 1-2 s, not minutes.
TASK_RETRY_POLICY = {"max_retries": 3, "retry_backoff": 1, "retry_backoff_max": 2, "default_retry_delay": 1}

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-always-eager
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-eager-propagates
CELERY_TASK_EAGER_PROPAGATES = True

# Serve static files straight from the apps; no collectstatic needed.
WHITENOISE_AUTOREFRESH = True
