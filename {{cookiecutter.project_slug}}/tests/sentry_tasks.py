"""A task that only the Sentry integration test sends (tests/test_sentry_integration.py).

The pools that test starts import this module (CELERY_TEST_TASK_MODULES, read by
config/settings/test.py); production workers never do. Its arguments are the kind
a real task should not take, but one will: a card token, a password, an email.
"""

from celery import shared_task


class CardRejected(Exception):
    pass


@shared_task
def charge_card(order_ref: str, card_token: str, password: str, customer_email: str) -> None:
    # The secrets are parameters: local variables of this frame, which Sentry
    # reports with the stack trace unless they are scrubbed.
    raise CardRejected(f"the provider rejected the card of order {order_ref}")
