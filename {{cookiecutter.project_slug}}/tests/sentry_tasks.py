"""A task that only the Sentry integration test sends (tests/test_sentry_integration.py).

The pools that test starts import this module (CELERY_TEST_TASK_MODULES, read by
config/settings/test.py); production workers never do. Its arguments are the kind
a real task should not take, but one will: a card token, a password, an email.
"""

from celery import shared_task


class CardRejected(Exception):
    pass


@shared_task
def charge_card(order_id: int, order_ref: str, card_token: str, password: str, customer_email: str) -> None:
    # The secrets are parameters: local variables of this frame, which Sentry
    # reports with the stack trace unless config/sentry.py keeps them back.
    raise CardRejected(f"the provider rejected the card of order {order_ref} for {customer_email}")


@shared_task(bind=True, max_retries=1)
def refund_card_later(self, order_id: int, card_token: str, customer_email: str) -> None:
    # Retried once, then failed: the retry's log line and the failure carry the same secrets.
    raise self.retry(exc=CardRejected(f"the refund of order {order_id} to {customer_email} failed"), countdown=0)
