import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class PaymentsConfig(AppConfig):
    name = "{{ cookiecutter.project_slug }}.payments"
    label = "payments"

    def ready(self):
        from . import checks  # noqa: F401
        from .providers import NOT_CONFIGURED, provider_name

        # Every process says it as it starts (web, workers, manage.py): an ERROR in
        # the logs, besides the checkout's message and check --deploy's payments.E001.
        if not provider_name():
            logger.error("%s", NOT_CONFIGURED)
