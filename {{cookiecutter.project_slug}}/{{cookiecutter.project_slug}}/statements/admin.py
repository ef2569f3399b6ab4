from django.contrib import admin

from .models import StatementLine, StatementRun


@admin.register(StatementRun)
class StatementRunAdmin(admin.ModelAdmin):
    list_display = ("month", "status", "batches", "lines", "created_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("error",)


@admin.register(StatementLine)
class StatementLineAdmin(admin.ModelAdmin):
    list_display = ("run", "user", "currency", "total", "count")
    list_filter = ("run",)
    search_fields = ("user__username",)
