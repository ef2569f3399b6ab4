import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class InvalidTransition(Exception):
    pass


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        PAID = "paid", "Paid"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"

    # Which status may follow which. PROCESSING -> PROCESSING is a retry.
    TRANSITIONS = {
        Status.PENDING: {Status.PROCESSING},
        Status.PROCESSING: {Status.PROCESSING, Status.PAID, Status.FAILED},
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
    # The provider's payment method token (Stripe: a PaymentMethod id).
    payment_method = models.CharField(max_length=64, blank=True)
    charge_id = models.CharField(max_length=64, blank=True)
    payment_attempts = models.PositiveIntegerField(default=0)
    failure_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"Order {self.pk} ({self.status})"

    def move_to(self, status: str) -> None:
        if status not in self.TRANSITIONS[self.status]:
            raise InvalidTransition(f"order {self.pk}: {self.status} -> {status} is not allowed")
        self.status = status
        if status == self.Status.PAID:
            self.paid_at = timezone.now()


class SandboxCharge(models.Model):
    """The development payment provider's own ledger: one row per accepted charge."""

    idempotency_key = models.CharField(max_length=64, unique=True)
    charge_id = models.CharField(max_length=64, unique=True)
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.charge_id
