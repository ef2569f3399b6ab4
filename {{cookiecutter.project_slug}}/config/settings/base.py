"""Settings shared by every environment. Values come from the environment (12-factor)."""

from email.headerregistry import Address
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF
from kombu import Exchange, Queue

from config import {% if cookiecutter.broker == "rabbitmq" %}amqp_frames, {% endif %}{% if cookiecutter.sentry == "yes" %}sentry, {% endif %}topology

BASE_DIR = Path(__file__).resolve().parent.parent.parent
APPS_DIR = BASE_DIR / "{{ cookiecutter.project_slug }}"

env = environ.Env()
# A ``.env`` file at the project root (created by the template, git-ignored) serves
# native development. Real environment variables always win over it.
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")

# ------------------------------------------------------------------------------
# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# DEBUG error pages show settings and request.META with what config/privacy.py allows:
# runserver puts the whole environment (DATABASE_URL ...) into META.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.privacy.ErrorPageFilter"
TIME_ZONE = {{ cookiecutter.timezone | py }}
LANGUAGE_CODE = "en-us"
USE_I18N = True
USE_TZ = True
SITE_URL = env("SITE_URL", default="http://localhost:8000")
# The human-readable name (page titles, the navigation bar, the sender of emails) and the
# production domain, as answered when the project was baked. SITE_NAME in the environment
# overrides the name. (It is not env()'s default=: django-environ reads a default that
# starts with "$" as the name of another variable.)
PROJECT_NAME = {{ cookiecutter.project_name | py }}
SITE_NAME = env("SITE_NAME", default="") or PROJECT_NAME
DOMAIN_NAME = {{ cookiecutter.domain_name | py }}
# The password `manage.py seed_demo_data` gives the `demo` account it creates.
DEMO_PASSWORD = env("DEMO_PASSWORD", default="demo")

# ------------------------------------------------------------------------------
# DATABASES
# ------------------------------------------------------------------------------
# https://docs.djangoproject.com/en/5.2/ref/settings/#databases
# Postgres in compose, CI and production; SQLite only as a native-development fallback.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Keep connections open between requests and between tasks, and check them before reuse:
# a worker that outlives a database restart must not fail its next task. In the workers
# this takes two more settings than in web: CELERY_DB_REUSE_MAX below, and the task
# signal handlers in config/celery_app.py (close_old_database_connections).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# --8<-- [start:transaction-pooling]
# True when DATABASE_URL points at a pooler in transaction mode (PgBouncer in
# docker-compose.production.yml): each transaction may run on another server
# connection, so nothing may outlive one.
DATABASE_TRANSACTION_POOLING = env.bool("DATABASE_TRANSACTION_POOLING", default=False)
if DATABASE_TRANSACTION_POOLING:
    # .iterator() would DECLARE a cursor WITH HOLD (autocommit) and fetch from it in
    # later transactions, on whichever server connection the pooler hands out.
    # https://docs.djangoproject.com/en/5.2/ref/databases/#transaction-pooling-and-server-side-cursors
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    # No server-side prepared statements: one prepared on a server connection is
    # unknown on the next (Django's default with psycopg 3; said here so that it stays).
    # https://www.psycopg.org/psycopg3/docs/advanced/prepare.html#using-prepared-statements-with-pgbouncer
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
# --8<-- [end:transaction-pooling]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ------------------------------------------------------------------------------
# APPS
# ------------------------------------------------------------------------------
DJANGO_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "django.contrib.humanize",  # intcomma: "10,000 rows"
]
THIRD_PARTY_APPS = [
    "django_celery_beat",
]
LOCAL_APPS = [
    "{{ cookiecutter.project_slug }}.core",
    "{{ cookiecutter.project_slug }}.users",
    "{{ cookiecutter.project_slug }}.payments",
    "{{ cookiecutter.project_slug }}.exports",
    "{{ cookiecutter.project_slug }}.outbox",
    "{{ cookiecutter.project_slug }}.statements",
    "{{ cookiecutter.project_slug }}.imports",
]
INSTALLED_APPS = DJANGO_APPS + THIRD_PARTY_APPS + LOCAL_APPS

AUTH_USER_MODEL = "users.User"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# ------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
MIDDLEWARE = [
    # /healthz, /readyz and /metrics: before host checks, HTTPS redirects and sessions.
    "{{ cookiecutter.project_slug }}.core.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # The Content-Security-Policy header below, with the response's nonce.
    "csp.middleware.CSPMiddleware",
]
# --8<-- [start:csp]
# What a page may load and run: its own scripts, styles and images, and Stripe.js on
# the checkout (https://docs.stripe.com/security/guide#content-security-policy).
# Inline <script> blocks carry the response's nonce (their nonce attribute is
# request.csp_nonce): an injected script has none and does not run. No inline styles.
# https://django-csp.readthedocs.io/en/latest/configuration.html
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE, "https://js.stripe.com"],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],  # Pico CSS draws its icons as data: SVGs
        "connect-src": [SELF, "https://api.stripe.com"],
        "frame-src": ["https://js.stripe.com", "https://hooks.stripe.com"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# --8<-- [end:csp]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [APPS_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "{{ cookiecutter.project_slug }}.core.context_processors.site",
            ],
        },
    },
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# ------------------------------------------------------------------------------
# STATIC AND MEDIA FILES
# ------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The site's own CSS and the vendored Pico CSS (static/vendor/pico/README.md): no CDN, no build step.
STATICFILES_DIRS = [APPS_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = env.path("DJANGO_MEDIA_ROOT", default=str(BASE_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# ------------------------------------------------------------------------------
# EMAIL
# ------------------------------------------------------------------------------
EMAIL_BACKEND = env("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
# From: the site's name, noreply@ the domain. Address quotes the name where it needs it, so
# that commas, colons and quotes in it still make one valid address (Django encodes accents).
DEFAULT_FROM_EMAIL = env("DJANGO_DEFAULT_FROM_EMAIL", default="") or str(Address(SITE_NAME, "noreply", DOMAIN_NAME))
# The SMTP server (production.py defaults to 587 with TLS).
EMAIL_HOST = env("DJANGO_EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("DJANGO_EMAIL_PORT", default=25)
# Fail fast: a hung SMTP server must not eat the whole task time limit.
EMAIL_TIMEOUT = 10

# ------------------------------------------------------------------------------
# PAYMENTS
# ------------------------------------------------------------------------------
# With a Stripe secret key, payments go to Stripe; without one, to the sandbox
# provider (payments/providers.py), which behaves like a real one, where it is
# allowed (PAYMENTS_ALLOW_SANDBOX below).
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
# The checkout page's Stripe.js Payment Element creates the PaymentMethod with it.
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY", default="")
# Signing secret of the webhook endpoint (/payments/stripe/webhook/, "whsec_...").
# Unset, the endpoint refuses every event and reconciliation's polling settles payments.
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
# Another address for Stripe's API (stripe-mock, a test double); empty: api.stripe.com.
STRIPE_API_BASE = env("STRIPE_API_BASE", default="")
# May the sandbox take payments when STRIPE_SECRET_KEY is not set (test cards, orders
# marked paid, no money taken)? Here, in development and tests, yes; production.py
# says no unless set to true. Not allowed and no key: the site takes no orders.
PAYMENTS_ALLOW_SANDBOX = env.bool("PAYMENTS_ALLOW_SANDBOX", default=True)
# Names this site in the metadata of every payment it creates. One Stripe account
# may serve several sites (another shop, staging, each developer's `stripe listen`)
# whose order ids overlap ours: only a payment naming this site and the order, for
# its amount and currency, settles an order (docs/idempotent-payments.md). Give each
# site on a shared account its own; do not change it while payments are in flight.
PAYMENTS_SITE_ID = env("PAYMENTS_SITE_ID", default="") or DOMAIN_NAME
# Seconds we wait for the provider: well inside worker-high's 25 s soft limit.
PAYMENT_PROVIDER_TIMEOUT = 10
# Orders PROCESSING (or waiting for authentication, or PENDING with no message
# waiting in the outbox) for longer than this are re-dispatched or polled by
# reconciliation (docs/payment-states.md, docs/outbox.md).
PAYMENT_STUCK_AFTER_MINUTES = env.int("PAYMENT_STUCK_AFTER_MINUTES", default=10)
# A customer who has not authenticated (3-D Secure) after this long has given up:
# reconciliation cancels the payment and fails the order.
PAYMENT_ACTION_TIMEOUT_MINUTES = env.int("PAYMENT_ACTION_TIMEOUT_MINUTES", default=60)
# Stripe forgets an idempotency key after 24 hours; re-sending a payment later
# could charge again. Reconciliation re-sends only younger orders and leaves older
# ones to an operator; a payment sent later anyway (a replayed dead letter) asks
# the provider for an earlier payment of the order before it charges.
PAYMENT_IDEMPOTENCY_WINDOW_HOURS = 23
# Reconciliation sends a stuck payment again at most this many times (every 5
# minutes: half an hour after the task's own retries); then it gives up on the
# order, with one dead letter and one log line, instead of one of each per cycle.
PAYMENT_RECONCILE_MAX_ATTEMPTS = 6

# ------------------------------------------------------------------------------
# EXPORTS
# ------------------------------------------------------------------------------
# Rows per batch: one part file and one checkpoint each.
EXPORT_BATCH_SIZE = env.int("EXPORT_BATCH_SIZE", default=100_000)
# A runner renews its lease with every checkpoint; a lease this old means a dead
# runner, and the watchdog (every minute) re-dispatches the job.
EXPORT_LEASE_SECONDS = env.int("EXPORT_LEASE_SECONDS", default=45)
# Pause between batches, to leave a busy primary database some headroom (0: full speed).
EXPORT_THROTTLE_SECONDS = env.float("EXPORT_THROTTLE_SECONDS", default=0.0)
# Exports one user may have queued or running at once. Each is a long job on the
# one-process export pool and a file on disk: without a limit one user (or a
# script) fills the queue and the disk. Asking for more gets a clear refusal.
EXPORT_MAX_RUNNING_PER_USER = env.int("EXPORT_MAX_RUNNING_PER_USER", default=2)
# Finished exports (and their files) are deleted after this many days.
EXPORT_RETENTION_DAYS = env.int("EXPORT_RETENTION_DAYS", default=7)

# ------------------------------------------------------------------------------
# IMPORTS
# ------------------------------------------------------------------------------
# The largest CSV a user may upload.
IMPORT_MAX_BYTES = env.int("IMPORT_MAX_BYTES", default=10_000_000)
# Rows read and checked before they are handed to the database: what an import
# holds in memory (on Postgres all of them go through one COPY; elsewhere one
# INSERT per batch).
IMPORT_BATCH_SIZE = env.int("IMPORT_BATCH_SIZE", default=1000)
# Pause after each batch, to leave a busy primary database some headroom (0: full speed).
IMPORT_THROTTLE_SECONDS = env.float("IMPORT_THROTTLE_SECONDS", default=0.0)
# Imports one user may have waiting or running at once. Each is up to half a minute
# on the export pool (one process) and a file in storage until it has run: without
# a limit one user (or a script) fills both. More are refused with a message.
IMPORT_MAX_PENDING_PER_USER = env.int("IMPORT_MAX_PENDING_PER_USER", default=2)
# Imports (their rows on the imports page, and any file left) are deleted after this many days.
IMPORT_RETENTION_DAYS = env.int("IMPORT_RETENTION_DAYS", default=7)

# ------------------------------------------------------------------------------
# STATEMENTS
# ------------------------------------------------------------------------------
# Users per batch task of the monthly statement fan-out (statements/tasks.py).
STATEMENT_BATCH_SIZE = env.int("STATEMENT_BATCH_SIZE", default=500)

# ------------------------------------------------------------------------------
# OUTBOX
# ------------------------------------------------------------------------------
# outbox.send() commits a task with the rows it is about; see docs/outbox.md.
# Right after COMMIT the request publishes it itself, waiting at most this many
# seconds for the broker (connect, and each socket operation; no retry). If that
# fails the outbox-relay process publishes it once the broker is back.
OUTBOX_PUBLISH_TIMEOUT = env.float("OUTBOX_PUBLISH_TIMEOUT", default=0.5)
# After a failed immediate attempt, requests of this process leave their messages
# to the relay for this many seconds instead of each waiting on a dead broker.
OUTBOX_BROKER_DOWN_BACKOFF = env.float("OUTBOX_BROKER_DOWN_BACKOFF", default=5.0)
# The relay's pass: every this many seconds, this many rows per transaction.
OUTBOX_RELAY_INTERVAL = env.float("OUTBOX_RELAY_INTERVAL", default=1.0)
OUTBOX_RELAY_BATCH_SIZE = env.int("OUTBOX_RELAY_BATCH_SIZE", default=100)
# Sent messages are deleted this many days after they were sent (outbox-cleanup, nightly).
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=7)

# ------------------------------------------------------------------------------
# LOGIN AND PASSWORD RESET LIMITS
# ------------------------------------------------------------------------------
# users/throttle.py; docs/site.md (login), docs/dispatch-after-commit.md (reset). In Redis,
# shared by every web process. How the client's address is found: how many reverse
# proxies in front of Django append it to X-Forwarded-For. 0: REMOTE_ADDR is the
# client (no proxy). Behind a proxy it must be their number (production.py: 1), or
# every client has the proxy's address; above it, clients choose their own address.
TRUSTED_PROXY_COUNT = env.int("DJANGO_TRUSTED_PROXY_COUNT", default=0)
# Login attempts (the site's and the admin's) per account and per client address in
# a window that opens with the first attempt. Past either limit a login is refused,
# the right password too, until the window closes. A success clears its account's count.
LOGIN_FAILURES_PER_ACCOUNT = env.int("LOGIN_FAILURES_PER_ACCOUNT", default=5)
LOGIN_FAILURES_PER_CLIENT = env.int("LOGIN_FAILURES_PER_CLIENT", default=20)
LOGIN_THROTTLE_SECONDS = env.int("LOGIN_THROTTLE_SECONDS", default=15 * 60)
# Password-reset emails per address asked for, and requests per client address, in
# a window; more are dropped silently (the page says the same for every request).
PASSWORD_RESETS_PER_ADDRESS = env.int("PASSWORD_RESETS_PER_ADDRESS", default=3)
PASSWORD_RESETS_PER_CLIENT = env.int("PASSWORD_RESETS_PER_CLIENT", default=10)
PASSWORD_RESET_THROTTLE_SECONDS = env.int("PASSWORD_RESET_THROTTLE_SECONDS", default=60 * 60)
# Reset requests (each holds an address someone typed) are deleted after this many
# days (password-reset-cleanup, nightly).
PASSWORD_RESET_RETENTION_DAYS = env.int("PASSWORD_RESET_RETENTION_DAYS", default=7)

# ------------------------------------------------------------------------------
# MONITORING
# ------------------------------------------------------------------------------
# user:password for Prometheus at /metrics; unset, the endpoint refuses everyone.
METRICS_BASIC_AUTH = env("METRICS_BASIC_AUTH", default="")

{%- if cookiecutter.sentry == "yes" %}
# --8<-- [start:sentry-settings]
# Sentry (config/sentry.py, docs/sentry.md): errors, traces and beat check-ins from
# web, every worker pool and beat; all of them load these settings first.
# Without SENTRY_DSN nothing is set up and nothing is sent.
SENTRY_DSN = env("SENTRY_DSN", default="")
# Empty: the settings module's name ("production", "local").
SENTRY_ENVIRONMENT = env("SENTRY_ENVIRONMENT", default="")
# Empty: sentry-sdk's own guess (the git commit, if the code is a checkout).
SENTRY_RELEASE = env("SENTRY_RELEASE", default="")
# Fractions of requests and tasks traced, and of those profiled; 0: errors and check-ins only.
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)
SENTRY_PROFILES_SAMPLE_RATE = env.float("SENTRY_PROFILES_SAMPLE_RATE", default=0.0)
sentry.init(
    SENTRY_DSN,
    environment=SENTRY_ENVIRONMENT,
    release=SENTRY_RELEASE,
    traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
    profiles_sample_rate=SENTRY_PROFILES_SAMPLE_RATE,
)
# --8<-- [end:sentry-settings]
{%- endif %}

# ------------------------------------------------------------------------------
# LOGGING
# ------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "verbose": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "verbose"}},
    "root": {"level": env("DJANGO_LOG_LEVEL", default="INFO"), "handlers": ["console"]},
}

# ------------------------------------------------------------------------------
# CELERY
# ------------------------------------------------------------------------------
# Every reliability knob Celery leaves implicit is set here on purpose, with the
# reason. Queue names, routes and pool profiles live in config/topology.py.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
# Redis keeps task results, metrics and the sandbox provider's ledger whichever
# broker carries the tasks (see BROKER below).
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")

# Celery's Django fixup closes every database connection before and after each task,
# whatever CONN_MAX_AGE says (celery/celery#4116; a change that honoured it was reverted
# in Celery 5.6, celery/celery#9824): every task paid for a new PostgreSQL connection,
# most of a short task's cost. With DB_REUSE_MAX the fixup closes them only every that
# many tasks per pool child (a bound on a connection's life, with CONN_MAX_AGE);
# close_old_database_connections (config/celery_app.py) does what Django does around a
# request, so that a broken or expired connection is replaced before a task uses it.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# --8<-- [start:result-backend]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-backend
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-extended
# Store task name, args, queue and the worker that ran it with each result:
# operators (and our routing tests) can see where a task actually ran.
CELERY_RESULT_EXTENDED = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-expires
# Results are for inspection, not storage: the database holds business state.
CELERY_RESULT_EXPIRES = 60 * 60 * 24
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#timezone
CELERY_TIMEZONE = TIME_ZONE

# JSON only: pickle would let anyone who can write to the broker run code.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
CELERY_ACCEPT_CONTENT = ["json"]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-serializer
CELERY_TASK_SERIALIZER = "json"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-serializer
CELERY_RESULT_SERIALIZER = "json"
# --8<-- [end:result-backend]

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-default-queue
# Unrouted tasks land in "default", never in Celery's implicit "celery" queue that
# no pool consumes (and manage.py check refuses unrouted tasks anyway).
CELERY_TASK_DEFAULT_QUEUE = topology.DEFAULT_QUEUE
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-create-missing-queues
# A route to a queue that is not declared raises at send time instead of silently
# creating a queue nobody consumes.
CELERY_TASK_CREATE_MISSING_QUEUES = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-routes
CELERY_TASK_ROUTES = topology.ROUTES

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
# Acknowledge a message only after the task finished: a worker that dies
# mid-task does not lose the message. Every task in this project is idempotent
# (or says why it need not be), which is what makes redelivery safe.
CELERY_TASK_ACKS_LATE = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
# If a child process is killed (OOM killer, hard time limit) do NOT requeue blindly:
# a task that kills its process would loop forever. ...
CELERY_TASK_REJECT_ON_WORKER_LOST = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-retry-on-worker-lost
# ... instead send it again as a retry, so max_retries bounds the attempts and the
# dead-letter path catches the last one.
CELERY_TASK_RETRY_ON_WORKER_LOST = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-on-failure-or-timeout
# A task that raised is finished: its failure is recorded, the message is acked.
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-track-started
# Off (Celery's default): a STARTED state would cost every task a second result
# write (a read, a write and a publish on the result backend) and its caller a second
# message, for a state nobody here reads. Flower shows "started" from the worker's
# task-started event; the database rows (orders, export jobs) say how work is going.
CELERY_TASK_TRACK_STARTED = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-time-limit
# Deliberately NOT set here: a global task_time_limit is copied into every task
# message and overrides the limits of the pool that runs it. Each pool sets its
# own limits on its worker command line (config/topology.py), and a task that
# sets a longer limit than its pool allows fails ``manage.py check``.

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
# One reserved message per child: with late acks a worker holds no more messages
# than it runs, and a long task never hoards the next ones. Pools say it again.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
# Keep retrying when the broker is not up yet (container start order), instead of
# relying on the deprecated implicit behaviour.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
# When the broker connection drops, late-ack tasks will be redelivered anyway;
# cancel them rather than let two copies run.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# https://docs.celeryq.dev/en/stable/userguide/workers.html#soft-shutdown
# On shutdown let running tasks finish for a while, then cancel them and hand
# their messages back to the broker. Each pool sets its own timeout
# (config/topology.py); this is the fallback. config/worker.py remaps SIGTERM so
# that it, too, starts the soft shutdown. An idle worker exits at once.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 10.0
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-max-memory-per-child
# Fallback memory cap (KiB); each pool sets its own.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = 250_000
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-send-task-events
# Off until someone watches. Task events (received, started, succeeded...) cost three
# publishes per task in the worker's main process, the pool's one single-threaded part:
# about 1 ms of CPU per task (the "+ worker task events" row of benchmarks/overhead.py).
# Flower is their only reader, and it turns them on itself: every 5 s it sends
# `enable_events` to every worker it can reach (its --enable_events option, on by
# default), so its task pages work wherever it runs. Worker heartbeats (worker-online,
# worker-heartbeat) are sent either way. Set it to true for another event consumer.
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-send-sent-event
# Off (Celery's default): a "task-sent" event would be one more publish in every
# delay(), that is in the web request that dispatches. How long work waits in each
# queue is measured by the latency canary (core/tasks.py), not from sent events.
CELERY_TASK_SEND_SENT_EVENT = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-hijack-root-logger
# Keep Django's LOGGING configuration in workers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# --8<-- [start:poison-settings]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-consumer
# The worker's consumer, extended to record poison messages (unknown task,
# undecodable body, refused content type) as core.PoisonMessage rows before
# they leave the broker, instead of only logging them (core/poison.py).
CELERY_WORKER_CONSUMER = "{{ cookiecutter.project_slug }}.core.poison:DeadLetterConsumer"
# Bytes of a poison message's body kept in its record (the size is kept whole).
POISON_MESSAGE_BODY_LIMIT = 64 * 1024
# Seconds the consumer waits for the record to be written before it gives up
# and keeps the message on the broker (a hung database must not stall the pool).
POISON_MESSAGE_RECORD_TIMEOUT = 5
# Seconds before a poison message that could not be recorded goes back to its
# queue, to be recorded once the database answers again.
POISON_MESSAGE_REQUEUE_DELAY = 10
# --8<-- [end:poison-settings]
# Retry defaults of every task (core/task_base.py). Backoff in seconds: 2, 4, 8 ...
# capped at 120 and randomised. The cap must stay below the visibility timeout.
# default_retry_delay also spaces the retry of a task whose process was killed.
TASK_RETRY_POLICY = {"max_retries": 5, "retry_backoff": 2, "retry_backoff_max": 120, "default_retry_delay": 10}
# Bytes of a dead letter's arguments (FailedTask) kept whole; above it the largest
# are cut, and the record says so and cannot be replayed. Also the characters kept
# of its exception message and traceback.
FAILED_TASK_ARGUMENTS_LIMIT = 64 * 1024
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#beat-scheduler
# Schedules are declared in code and editable in the admin (django-celery-beat).
# Our subclass adds the heartbeat file read by the compose healthcheck, and records
# each run before sending it, so that a killed beat does not send a tick twice.
CELERY_BEAT_SCHEDULER = "{{ cookiecutter.project_slug }}.core.beat:HeartbeatDatabaseScheduler"
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html#beat-entries
# Declared in code, synced into the database by beat at start. Each entry expires
# before its next run, so a backlog never piles up stale runs.
# django-celery-beat reads "expire_seconds" (it silently drops
# Celery's "expires" when syncing to the database). Each entry is also
# `manage.py scheduled run <name>`, for cron.
CELERY_BEAT_SCHEDULE = {
    "export-watchdog": {
        "task": "{{ cookiecutter.project_slug }}.exports.tasks.export_watchdog",
        "schedule": crontab(),  # every minute
        "options": {"queue": "default", "expire_seconds": 50},
    },
    "queue-latency-probe": {
        "task": "{{ cookiecutter.project_slug }}.core.tasks.dispatch_latency_probes",
        "schedule": crontab(),  # every minute
        "options": {"queue": "default", "expire_seconds": 50},
    },
    # Password resets whose message a killed worker took with it (users/tasks.py).
    "password-reset-resend": {
        "task": "{{ cookiecutter.project_slug }}.users.tasks.resend_lost_password_resets",
        "schedule": crontab(),  # every minute
        "options": {"queue": "default", "expire_seconds": 50},
    },
    "payment-reconciliation": {
        "task": "{{ cookiecutter.project_slug }}.payments.tasks.reconcile_stuck_payments",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": "default", "expire_seconds": 240},
    },
    "expired-export-cleanup": {
        "task": "{{ cookiecutter.project_slug }}.exports.tasks.cleanup_expired_exports",
        "schedule": crontab(hour=3, minute=30),
        "options": {"queue": "low", "expire_seconds": 3600},
    },
    # Old imports, and any uploaded file an import left behind (imports/tasks.py).
    "expired-import-cleanup": {
        "task": "{{ cookiecutter.project_slug }}.imports.tasks.cleanup_expired_imports",
        "schedule": crontab(hour=4, minute=15),
        "options": {"queue": "low", "expire_seconds": 3600},
    },
    # Django's clearsessions, as a task: expired sessions are deleted nightly.
    "expired-session-cleanup": {
        "task": "{{ cookiecutter.project_slug }}.core.tasks.clear_expired_sessions",
        "schedule": crontab(hour=3, minute=15),
        "options": {"queue": "low", "expire_seconds": 3600},
    },
    # Rows nobody prunes otherwise: reset requests, sent outbox messages.
    "password-reset-cleanup": {
        "task": "{{ cookiecutter.project_slug }}.users.tasks.prune_password_resets",
        "schedule": crontab(hour=3, minute=45),
        "options": {"queue": "low", "expire_seconds": 3600},
    },
    "outbox-cleanup": {
        "task": "{{ cookiecutter.project_slug }}.outbox.tasks.prune_sent_messages",
        "schedule": crontab(hour=4, minute=0),
        "options": {"queue": "low", "expire_seconds": 3600},
    },
}

# ------------------------------------------------------------------------------
# BROKER
# ------------------------------------------------------------------------------
{%- if cookiecutter.broker == "rabbitmq" %}
# --8<-- [start:broker-rabbitmq]
# RabbitMQ carries the tasks: acknowledgements are tracked per consumer
# connection, so a worker that dies hands its unacknowledged messages back at
# once (Redis waits for a visibility timeout). Trade-offs: docs/broker-choice.md.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//")
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-queues
# Quorum queues: replicated and durable, written to disk before the publisher is
# told "ok". Each queue gets its own topic exchange because Celery's native
# delayed delivery (below) cannot route through direct exchanges; with a direct
# exchange every retry countdown would sit in a worker process until it is due.
# manage.py check refuses quorum queues on a direct exchange.
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
    for name in topology.QUEUES
]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-native-delayed-delivery-queue-type
# Quorum queues cannot use global QoS, so a worker can no longer raise its prefetch
# to hold countdown/ETA tasks. Celery then delays them in the broker instead: a
# chain of "celery_delayed_*" queues (TTL + dead-lettering) declared by the workers.
CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-detect-quorum-queues
CELERY_WORKER_DETECT_QUORUM_QUEUES = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
# Publisher confirms: .delay() returns only after RabbitMQ has taken the message,
# so a send that fails raises in the caller instead of vanishing.
# RabbitMQ closes a channel whose delivery stays unacknowledged for longer than
# its consumer_timeout (30 min by default); with late acks that is a task's run
# time. docker-compose raises it above the longest hard time limit.
# frame_writer: amqp's own, except that the cold shutdown Celery runs inside the
# SIGTERM handler cannot deadlock on a frame the loop was writing (config/amqp_frames.py).
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True, "frame_writer": amqp_frames.frame_writer}
# --8<-- [end:broker-rabbitmq]
{%- else %}
# --8<-- [start:broker-redis]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-queues
# One durable queue per topology queue, each bound to its own direct exchange
# (what Celery would create implicitly, spelled out).
CELERY_TASK_QUEUES = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in topology.QUEUES]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
# Redis redelivers unacknowledged messages after the visibility timeout; it must
# exceed the longest hard time limit or long tasks run twice (celery#4400, #7918).
# queue_order_strategy: a worker consuming several queues asks Redis for them in
# the order its pool lists them (config/topology.py), and Redis answers from the
# first that holds a message: worker-default takes every waiting "default" message
# before the next "low" one. kombu's default, "round_robin", alternates between them.
# https://docs.celeryq.dev/projects/kombu/en/stable/reference/kombu.transport.redis.html
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": topology.VISIBILITY_TIMEOUT,
    "queue_order_strategy": "priority",
}
# --8<-- [end:broker-redis]
{%- endif %}
