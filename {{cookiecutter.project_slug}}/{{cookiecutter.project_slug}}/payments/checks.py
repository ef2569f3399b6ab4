from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security, deploy=True)
def check_payment_provider(app_configs, **kwargs):
    """In production, charging the sandbox instead of Stripe is almost surely a mistake."""
    if settings.STRIPE_SECRET_KEY or settings.PAYMENTS_ALLOW_SANDBOX:
        return []
    return [
        checks.Warning(
            "Payments go to the sandbox provider: STRIPE_SECRET_KEY is not set.",
            hint="Set STRIPE_SECRET_KEY, or PAYMENTS_ALLOW_SANDBOX=true for a staging site.",
            id="payments.W001",
        )
    ]
