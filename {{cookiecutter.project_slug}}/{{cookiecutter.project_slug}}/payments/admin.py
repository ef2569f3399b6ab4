from django.contrib import admin

from .models import Order, SandboxCharge


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "amount_cents", "currency", "status", "payment_attempts", "created_at")
    list_filter = ("status",)
    readonly_fields = (
        "idempotency_key",
        "submission_key",
        "charge_id",
        "provider_status",
        "next_action_url",
        "payment_attempts",
        "paid_at",
    )


@admin.register(SandboxCharge)
class SandboxChargeAdmin(admin.ModelAdmin):
    list_display = ("charge_id", "amount_cents", "currency", "created_at")
