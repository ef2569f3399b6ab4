from django.contrib import admin, messages

from .models import FailedTask


@admin.register(FailedTask)
class FailedTaskAdmin(admin.ModelAdmin):
    list_display = ("task_name", "failed_at", "queue", "exception_type", "retries", "replayed_at")
    list_filter = ("task_name", "queue", "exception_type")
    search_fields = ("task_id", "task_name", "exception_message")
    readonly_fields = [field.name for field in FailedTask._meta.fields]
    actions = ["replay"]

    @admin.action(description="Replay the selected tasks")
    def replay(self, request, queryset):
        for failed in queryset:
            failed.replay()
        self.message_user(request, f"Replayed {queryset.count()} task(s).", messages.SUCCESS)

    def has_add_permission(self, request):
        return False
