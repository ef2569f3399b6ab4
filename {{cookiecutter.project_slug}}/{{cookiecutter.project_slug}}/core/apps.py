from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.core"
    label = "core"

    def ready(self):
        # Registers the queue-topology checks with ``manage.py check``.
        from . import checks  # noqa: F401
