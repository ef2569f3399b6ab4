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


@admin.register(SandboxCharge)
class SandboxChargeAdmin(admin.ModelAdmin):
    list_display = ("charge_id", "amount_cents", "currency", "created_at", "key_forgotten")
