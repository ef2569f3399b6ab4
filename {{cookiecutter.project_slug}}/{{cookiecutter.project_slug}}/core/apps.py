from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.core"
    label = "core"

    def ready(self):
        # Registers the queue-topology and security checks with ``manage.py check``.
        from . import checks, security_checks  # noqa: F401
