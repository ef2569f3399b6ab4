from django.apps import AppConfig


class StatementsConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.statements"
    label = "statements"
