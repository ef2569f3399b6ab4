from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.outbox"
    label = "outbox"
    verbose_name = "Transactional outbox"
