from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.payments"
    label = "payments"

    def ready(self):
        from . import checks  # noqa: F401
