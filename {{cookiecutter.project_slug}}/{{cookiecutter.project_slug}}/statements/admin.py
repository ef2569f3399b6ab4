from django.contrib import admin

from .models import StatementBatch, StatementLine, StatementRun


class StatementBatchInline(admin.TabularInline):
    """Which batches of the run wrote their lines, and why one did not."""

    model = StatementBatch
    fields = ("first_user_id", "last_user_id", "status", "lines", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(StatementRun)
class StatementRunAdmin(admin.ModelAdmin):
    list_display = ("month", "status", "batches", "lines", "created_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("error",)
    inlines = [StatementBatchInline]


@admin.register(StatementLine)
class StatementLineAdmin(admin.ModelAdmin):
    list_display = ("run", "user", "currency", "total", "count")
    list_filter = ("run",)
    search_fields = ("user__username",)
