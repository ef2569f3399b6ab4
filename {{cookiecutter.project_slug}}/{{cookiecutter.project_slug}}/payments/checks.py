from django.conf import settings
from django.core import checks

from .providers import NOT_CONFIGURED, provider_name


@checks.register(checks.Tags.security, deploy=True)
def check_payment_provider(app_configs, **kwargs):
    """A production site takes real payments, or says out loud that it does not.

    No provider at all (no Stripe key, the sandbox not allowed) is an error: the
    site takes no orders. The sandbox, allowed on purpose, stays a warning on every
    deploy: its orders are marked paid and no money is taken.
    """
    name = provider_name()
    if name == "stripe":
        return []
    if name == "sandbox":
        return [
            checks.Warning(
                "Payments go to the sandbox provider: PAYMENTS_ALLOW_SANDBOX is true and STRIPE_SECRET_KEY "
                "is not set. Test cards are taken, orders are marked paid, and no money is taken.",
                hint="Right for a staging or demo site only. For a shop, set STRIPE_SECRET_KEY.",
                id="payments.W001",
            )
        ]
    return [
        checks.Error(
            NOT_CONFIGURED,
            hint="Set STRIPE_SECRET_KEY, STRIPE_PUBLISHABLE_KEY and STRIPE_WEBHOOK_SECRET where the site's "
            "environment comes from: .envs/.production/.django with docker compose.",
            id="payments.E001",
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
