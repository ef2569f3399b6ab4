"""Deploy checks for settings Django's own checks accept but browsers or lists will not."""

from django.conf import settings
from django.core import checks

# What https://hstspreload.org requires of the header of a domain submitted to the list.
PRELOAD_MIN_SECONDS = 31536000


@checks.register(checks.Tags.security, deploy=True)
def check_hsts_preload(app_configs, **kwargs):
    """A preload directive the preload list would refuse: under a year, or without subdomains."""
    if not settings.SECURE_HSTS_PRELOAD:
        return []
    if settings.SECURE_HSTS_SECONDS >= PRELOAD_MIN_SECONDS and settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
        return []
    return [
        checks.Error(
            f"SECURE_HSTS_PRELOAD is on with max-age={settings.SECURE_HSTS_SECONDS} and "
            f"includeSubDomains {'on' if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS else 'off'}: "
            "the preload list refuses such a domain, and browsers that preload it anyway pin "
            "HTTPS for longer than the header says.",
            hint=f"Set DJANGO_SECURE_HSTS_SECONDS to {PRELOAD_MIN_SECONDS} or more and keep "
            "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS on, or turn DJANGO_SECURE_HSTS_PRELOAD off.",
            id="core.E001",
        )
    ]
