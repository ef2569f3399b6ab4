from django.apps import AppConfig


class ImportsConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.imports"
    label = "imports"
