"""Deploy check: the login and reset limits count clients, not the reverse proxy."""

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security, deploy=True)
def check_trusted_proxies(app_configs, **kwargs):
    """A proxy in front (SECURE_PROXY_SSL_HEADER) that the client address ignores."""
    if settings.TRUSTED_PROXY_COUNT or not settings.SECURE_PROXY_SSL_HEADER:
        return []
    return [
        checks.Warning(
            "SECURE_PROXY_SSL_HEADER says a reverse proxy is in front of Django, but TRUSTED_PROXY_COUNT is 0: "
            "every request then comes from the proxy's address, and the per-client login and password-reset "
            "limits (users/throttle.py) lock out everyone at once.",
            hint="Set DJANGO_TRUSTED_PROXY_COUNT to the number of proxies that append to X-Forwarded-For.",
            id="users.W001",
        )
    ]
