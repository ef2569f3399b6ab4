"""The Celery application: configured from Django settings, one base task, JSON only."""

import json

import pytest
from django.conf import settings
from kombu.exceptions import ContentDisallowed

from config.celery_app import app

from ..task_base import BaseTask


def test_the_app_reads_the_celery_settings():
    assert app.main == "{{ cookiecutter.project_slug }}"
    assert app.conf.result_backend == settings.CELERY_RESULT_BACKEND
    assert app.conf.result_backend.startswith(("redis://", "rediss://", "unix://"))
    assert app.conf.result_extended is True
    assert app.conf.result_expires == 24 * 60 * 60
    assert app.conf.task_default_queue == "default"
    assert (app.conf.task_serializer, app.conf.result_serializer) == ("json", "json")
    assert app.conf.accept_content == ["json"]


def test_every_task_of_the_project_has_the_base_task():
    app.autodiscover_tasks(force=True)
    ours = [task for name, task in app.tasks.items() if name.startswith("{{ cookiecutter.project_slug }}.")]
    assert len(ours) > 10
    assert [task.name for task in ours if not isinstance(task, BaseTask)] == []


def test_a_pickled_body_is_refused_and_json_is_accepted():
    from kombu.serialization import dumps, loads, prepare_accept_content

    accept = prepare_accept_content(app.conf.accept_content)  # what a worker checks message bodies against
    content_type, encoding, body = dumps({"order_id": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=accept)
    assert loads(json.dumps([1]), "application/json", "utf-8", accept=accept) == [1]
