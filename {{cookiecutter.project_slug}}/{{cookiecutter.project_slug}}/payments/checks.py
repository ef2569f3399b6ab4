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


@checks.register(checks.Tags.security, deploy=True)
def check_stripe_webhook(app_configs, **kwargs):
    """With Stripe, an unverifiable webhook means 3-D Secure payments wait for polling."""
    if not settings.STRIPE_SECRET_KEY or settings.STRIPE_WEBHOOK_SECRET:
        return []
    return [
        checks.Warning(
            "STRIPE_WEBHOOK_SECRET is not set: Stripe's webhook events are refused, and payments "
            "that need 3-D Secure settle only when reconciliation polls (every 5 minutes).",
            hint="Set it to the endpoint's signing secret (whsec_...), see docs/payment-states.md.",
            id="payments.W002",
        )
    ]
