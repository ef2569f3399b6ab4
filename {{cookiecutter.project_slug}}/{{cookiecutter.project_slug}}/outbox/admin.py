from django.contrib import admin

from .models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "task_name", "args", "queue", "created_at", "sent_at", "attempts", "last_error")
    list_filter = ("queue", ("sent_at", admin.EmptyFieldListFilter))
    search_fields = ("task_name", "task_id")
    readonly_fields = ("task_id", "created_at", "sent_at", "attempts", "last_error", "trace_context")
