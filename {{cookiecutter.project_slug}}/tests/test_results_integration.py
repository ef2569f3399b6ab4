"""The result backend on the real pools: extended results in Redis, expiring after a day."""

from django.conf import settings
from django.contrib.auth import get_user_model

from {{ cookiecutter.project_slug }}.users.tasks import send_password_reset_email


def test_a_result_is_json_extended_and_expires(live_celery):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")

    app = send_password_reset_email.app  # config.celery_app.app
    result = send_password_reset_email.delay(user.pk)
    assert result.get(timeout=60) == "sent"

    # Whatever the broker, results live in Redis (a chord's counter too).
    key = app.backend.get_key_for_task(result.id)
    stored = app.backend.decode(app.backend.client.get(key))  # JSON: the result serializer
    assert (stored["status"], stored["result"]) == ("SUCCESS", "sent")
    # result_extended: the task's name, arguments, queue and worker are kept with it.
    assert (stored["name"], stored["args"], stored["queue"]) == (send_password_reset_email.name, [user.pk], "high")
    assert stored["worker"] == live_celery.hostname("worker-high")
    # result_expires: Redis deletes it after a day; results are not a database.
    assert 0 < app.backend.client.ttl(key) <= settings.CELERY_RESULT_EXPIRES
