from django.apps import AppConfig


class ExportsConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.exports"
    label = "exports"
