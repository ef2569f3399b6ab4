from django.contrib import admin, messages

from .models import FailedTask, PoisonMessage


@admin.register(FailedTask)
class FailedTaskAdmin(admin.ModelAdmin):
    list_display = ("task_name", "failed_at", "queue", "exception_type", "retries", "failure", "replayed_at")
    list_filter = ("task_name", "queue", "exception_type", "arguments_truncated")
    search_fields = ("task_id", "task_name", "exception_message")
    readonly_fields = [field.name for field in FailedTask._meta.fields]
    actions = ["replay"]

    @admin.action(description="Replay the selected tasks")
    def replay(self, request, queryset):
        replayed = 0
        for failed in queryset:
            try:
                failed.replay()
            except ValueError as error:
                self.message_user(request, f"{failed.pk} not replayed: {error}", messages.ERROR)
            else:
                replayed += 1
        if replayed:
            self.message_user(request, f"Replayed {replayed} task(s).", messages.SUCCESS)

    def has_add_permission(self, request):
        return False


@admin.register(PoisonMessage)
class PoisonMessageAdmin(admin.ModelAdmin):
    list_display = ("first_seen_at", "reason", "queue", "task_name", "content_type", "body_size", "deliveries")
    list_filter = ("reason", "queue", "content_type")
    search_fields = ("task_name", "task_id", "exception_message", "fingerprint")
    readonly_fields = [field.name for field in PoisonMessage._meta.fields]
    actions = ["replay"]

    @admin.action(description="Send again (unknown tasks deployed since)")
    def replay(self, request, queryset):
        for poison in queryset:
            try:
                poison.replay()
            except ValueError as error:
                self.message_user(request, f"{poison.pk}: {error}", messages.ERROR)
            else:
                self.message_user(request, f"{poison.pk}: sent again to {poison.queue}.", messages.SUCCESS)

    def has_add_permission(self, request):
        return False
