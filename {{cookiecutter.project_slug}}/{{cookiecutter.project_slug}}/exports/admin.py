from django.contrib import admin

from .models import ExportJob


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "status", "processed_rows", "total_rows", "created_at", "finished_at")
    list_filter = ("status",)
