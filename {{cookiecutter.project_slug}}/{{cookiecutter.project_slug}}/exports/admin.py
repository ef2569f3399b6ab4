from django.contrib import admin

from .models import ExportJob


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "status",
        "date_from",
        "date_to",
        "processed_rows",
        "total_rows",
        "lease_expires_at",
        "finished_at",
    )
    list_filter = ("status",)
    search_fields = ("user__username", "error")
    readonly_fields = ("parts", "last_key", "bytes_written", "lease_owner", "lease_expires_at", "heartbeat_at")
