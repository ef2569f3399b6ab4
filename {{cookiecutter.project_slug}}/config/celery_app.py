"""The Celery application, ``app``: ``celery -A config.celery_app ...``.

All configuration lives in Django settings under the ``CELERY_`` namespace
(see ``config/settings/base.py``); the queue topology lives in ``config/topology.py``.
"""

import os

from celery import Celery

# Workers, beat and flower import this module before Django is set up.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Every task gets retry defaults, structured logs and the dead-letter record
# from one base class.
app = Celery("{{ cookiecutter.project_slug }}", task_cls="{{ cookiecutter.project_slug }}.core.task_base:BaseTask")

# ``CELERY_TASK_ROUTES`` in settings becomes ``task_routes`` here, and so on.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Import ``<app>/tasks.py`` of every installed Django app.
app.autodiscover_tasks()
