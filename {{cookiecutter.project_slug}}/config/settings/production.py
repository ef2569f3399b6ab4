"""Production: everything from the environment, nothing insecure by default."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import DATABASES, DOMAIN_NAME, env

# docker-compose.production.yml loads these files into every container (env_file).
# Anywhere else (a shell on the host, `manage.py check --deploy` before a deploy), load
# them yourself first; required() says so when a variable is missing.
ENV_FILES = (".envs/.production/.django", ".envs/.production/.postgres")


def required(name: str) -> str:
    """The value of an environment variable production cannot start without."""
    try:
        return env(name)
    except ImproperlyConfigured:
        sources = " ".join(f". {path};" for path in ENV_FILES)
        raise ImproperlyConfigured(
            f"{name} is not set. Production settings read everything from the environment: "
            f"docker compose -f docker-compose.production.yml loads {' and '.join(ENV_FILES)} for you; "
            f"in a shell, load them first:  set -a; {sources} set +a"
        ) from None


SECRET_KEY = required("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[DOMAIN_NAME])
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# An account seed_demo_data creates on a public site gets a random password.
DEMO_PASSWORD = env("DEMO_PASSWORD", default="")

# ------------------------------------------------------------------------------
# SECURITY
# ------------------------------------------------------------------------------
# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The TLS-terminating reverse proxy in front of the django service (docker-compose.production.yml)
# appends the client's address to X-Forwarded-For: the login and password-reset limits
# count that address (users/throttle.py). Set it to the number of such proxies; without
# a proxy, 0 (else a client could name its own address).
TRUSTED_PROXY_COUNT = env.int("DJANGO_TRUSTED_PROXY_COUNT", default=1)
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[f"https://{DOMAIN_NAME}"])
# --8<-- [start:hsts]
# HSTS: browsers use only HTTPS for the site for a year, as the production site already
# redirects every request to HTTPS. (Unsure whether every subdomain serves HTTPS? Set
# DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS=false, or start with a few minutes and raise it.)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
# Preloading asks browser vendors to ship the domain as HTTPS-only: a one-way door
# (leaving the list takes months), so it is yours to open: DJANGO_SECURE_HSTS_PRELOAD=true,
# then submit the domain at https://hstspreload.org. core.E001 refuses a preload the
# list would reject (under a year, or without subdomains).
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = ["security.W021"]  # "SECURE_HSTS_PRELOAD is not True": on purpose, above
# --8<-- [end:hsts]
SECURE_CONTENT_TYPE_NOSNIFF = True

# ------------------------------------------------------------------------------
# STORAGE
# ------------------------------------------------------------------------------
{%- if cookiecutter.storage == "s3" %}
# Export files go to S3 (django-storages); static files are served by whitenoise.
# https://django-storages.readthedocs.io/en/latest/backends/amazon-S3.html
STORAGES = {
    "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": required("DJANGO_AWS_STORAGE_BUCKET_NAME"),
            "region_name": env("DJANGO_AWS_S3_REGION_NAME", default=None),
            "file_overwrite": False,
            "default_acl": "private",
            # Downloads use short-lived signed URLs.
            "querystring_expire": 600,
        },
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
{%- else %}
# Export files live on the local filesystem (a named volume in compose). Set
# DJANGO_MEDIA_ROOT to a shared volume when web and workers run on several hosts.
{%- endif %}

# ------------------------------------------------------------------------------
# PAYMENTS
# ------------------------------------------------------------------------------
# No STRIPE_SECRET_KEY here means no payments: checkout says so and creates no order,
# every process logs why as it starts, and check --deploy fails (payments.E001). Not
# the sandbox, which would take test cards and mark orders paid with no money taken:
# only with PAYMENTS_ALLOW_SANDBOX=true, for a staging or demo site (payments.W001).
PAYMENTS_ALLOW_SANDBOX = env.bool("PAYMENTS_ALLOW_SANDBOX", default=False)

# ------------------------------------------------------------------------------
# EMAIL
# ------------------------------------------------------------------------------
EMAIL_HOST = env("DJANGO_EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("DJANGO_EMAIL_PORT", default=587)
EMAIL_HOST_USER = env("DJANGO_EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("DJANGO_EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("DJANGO_EMAIL_USE_TLS", default=True)
