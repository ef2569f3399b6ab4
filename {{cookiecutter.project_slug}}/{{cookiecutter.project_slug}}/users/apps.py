from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.users"
    label = "users"

    def ready(self):
        # Registers the deploy check on the client address (TRUSTED_PROXY_COUNT).
        from . import checks  # noqa: F401
