from django.contrib import admin

from .models import TransactionImport


@admin.register(TransactionImport)
class TransactionImportAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "status", "rows", "created_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("user__username", "error")
