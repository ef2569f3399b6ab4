# Load the Celery app whenever Django starts, so that ``@shared_task`` functions bind
# to it and ``delay()`` from a web process uses its broker and routes.
from .celery_app import app as celery_app

__all__ = ("celery_app",)
