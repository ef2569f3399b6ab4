from django.contrib import admin

from .models import Order, SandboxCharge


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "amount_cents", "currency", "status", "payment_attempts", "created_at")
    # "Reconcile gave up at": orders reconciliation left to an operator (their dead letter says why).
    list_filter = ("status", ("reconcile_gave_up_at", admin.EmptyFieldListFilter))
    readonly_fields = (
        "idempotency_key",
        "submission_key",
        "charge_id",
        "provider_status",
        "next_action_url",
        "payment_attempts",
        "reconcile_attempts",
        "reconcile_gave_up_at",
        "paid_at",
    )
    # Part of every request sent to the provider under the order's idempotency key,
    # and what its payment must match to settle it (tasks.mismatch).
    PAYMENT_TERMS = ("amount_cents", "currency", "payment_method")

    def get_readonly_fields(self, request, obj=None):
        """The amount, currency and payment method are fixed once a payment was sent.

        Changed afterwards, the order would no longer match what the provider holds:
        a resend under the same key is refused (Stripe: ``idempotency_error``), a
        webhook or a poll finds a payment "for another amount", and the customer is
        charged one amount for an order that shows another.
        """
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and (obj.payment_attempts or obj.charge_id or obj.status != Order.Status.PENDING):
            fields = (*fields, *self.PAYMENT_TERMS)
        return fields


@admin.register(SandboxCharge)
class SandboxChargeAdmin(admin.ModelAdmin):
    list_display = ("charge_id", "amount_cents", "currency", "created_at", "key_forgotten")
