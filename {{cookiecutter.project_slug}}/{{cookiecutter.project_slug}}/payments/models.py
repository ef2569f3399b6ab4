import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone


class InvalidTransition(Exception):
    pass


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        # The customer must authenticate the payment (3-D Secure): the provider
        # holds it until they do, fail, or give up (docs/payment-states.md).
        REQUIRES_ACTION = "requires_action", "Action required"
        PAID = "paid", "Paid"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"

    # Which status may follow which. PROCESSING -> PROCESSING is a retry (or the
    # provider still processing); REQUIRES_ACTION -> PROCESSING is an
    # authenticated payment that the provider has not settled yet.
    TRANSITIONS = {
        Status.PENDING: {Status.PROCESSING},
        Status.PROCESSING: {Status.PROCESSING, Status.REQUIRES_ACTION, Status.PAID, Status.FAILED},
        Status.REQUIRES_ACTION: {Status.REQUIRES_ACTION, Status.PROCESSING, Status.PAID, Status.FAILED},
        Status.FAILED: {Status.PROCESSING},
        Status.PAID: {Status.REFUNDED},
        Status.REFUNDED: set(),
    }

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="EUR")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    # Created with the order and sent with every charge attempt: the provider
    # returns the earlier charge for a repeated key instead of charging again.
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # One per rendered checkout form: a double-clicked or replayed POST of the
    # same form finds the order the first one created (see the constraint below).
    # Empty for orders made elsewhere (admin, seed data).
    submission_key = models.UUIDField(null=True, blank=True, editable=False)
    # The provider's payment method token (Stripe: a PaymentMethod id).
    payment_method = models.CharField(max_length=64, blank=True)
    # The provider's id for this payment (Stripe: the PaymentIntent id), known as
    # soon as the provider answered, also before the payment is settled.
    charge_id = models.CharField(max_length=64, blank=True)
    # What the provider last said (Stripe: the PaymentIntent status), shown on the order page.
    provider_status = models.CharField(max_length=32, blank=True)
    # Where the customer completes authentication (REQUIRES_ACTION).
    next_action_url = models.URLField(max_length=2048, blank=True)
    payment_attempts = models.PositiveIntegerField(default=0)
    # Times reconciliation sent the payment again (PAYMENT_RECONCILE_MAX_ATTEMPTS at
    # most), and when it gave up and left the order to an operator, with one dead letter.
    reconcile_attempts = models.PositiveSmallIntegerField(default=0)
    reconcile_gave_up_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # The database, not the view, guarantees one order per submission:
            # concurrent POSTs race on this index and all but one lose.
            models.UniqueConstraint(fields=["user", "submission_key"], name="payments_one_order_per_submission"),
        ]

    def __str__(self):
        return f"Order {self.pk} ({self.status})"

    @property
    def amount(self) -> Decimal:
        """The amount in the currency's main unit (every currency we take has cents)."""
        return Decimal(self.amount_cents) / 100

    @property
    def is_retrying(self) -> bool:
        """PROCESSING again after an attempt that did not settle (a timeout, the provider down)."""
        return self.status == self.Status.PROCESSING and self.payment_attempts > 1

    def move_to(self, status: str) -> None:
        if status not in self.TRANSITIONS[self.status]:
            raise InvalidTransition(f"order {self.pk}: {self.status} -> {status} is not allowed")
        self.status = status
        if status != self.Status.REQUIRES_ACTION:
            self.next_action_url = ""
        if status == self.Status.PAID:
            self.paid_at = timezone.now()


class SandboxCharge(models.Model):
    """The development payment provider's own ledger: one row per accepted charge.

    Like Stripe, the sandbox remembers an idempotency key for 24 hours: a repeat
    within them returns the earlier charge, a repeat after them is a new request
    and charges again (the old row is then marked ``key_forgotten``).
    """

    idempotency_key = models.CharField(max_length=64, db_index=True)
    charge_id = models.CharField(max_length=64, unique=True)
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)
    key_forgotten = models.BooleanField(default=False)

    class Meta:
        constraints = [
            # One charge per remembered key, also under concurrent calls.
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=models.Q(key_forgotten=False),
                name="payments_sandbox_one_charge_per_remembered_key",
            ),
        ]

    def __str__(self):
        return self.charge_id
