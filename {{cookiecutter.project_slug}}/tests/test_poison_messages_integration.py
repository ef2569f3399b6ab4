"""Poison messages on the real worker pools, on the project's broker.

Messages a worker cannot run are published with kombu straight onto a task
queue, the way a misconfigured or out-of-date producer would; each must leave
one ``PoisonMessage`` with its raw body and the reason, and the pool must go on
running the real tasks behind them.
"""

import base64
import json
import pickle
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from {{ cookiecutter.project_slug }}.core.models import PoisonMessage
from {{ cookiecutter.project_slug }}.payments.models import Order
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment

from .conftest import publish_raw, wait_for

pytestmark = pytest.mark.integration
app = process_payment.app
TIMEOUT = 60


def task_headers(name: str) -> dict:
    """The headers of a task message (protocol 2), for a task called ``name``."""
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "argsrepr": "()", "kwargsrepr": "{}"}


def test_poison_messages_are_recorded_and_the_worker_keeps_consuming(live_celery):
    user = get_user_model().objects.create_user("poison", "poison@example.com", "pw")
    order = Order.objects.create(user=user, amount_cents=4200)
    unknown_body = json.dumps([[order.pk], {}, {"callbacks": None, "errbacks": None, "chain": None}]).encode()
    not_json = b"{'order_id': 1, oops"
    pickled = pickle.dumps(((order.pk,), {}, {}), protocol=4)

    # (a) a task no worker knows, (b) JSON that is not, (c) pickle, refused: all on "high".
    unknown = task_headers("{{ cookiecutter.project_slug }}.payments.tasks.refund_payment")
    publish_raw("high", unknown_body, "application/json", unknown)
    publish_raw("high", not_json, "application/json", task_headers(process_payment.name))
    publish_raw("high", pickled, "application/x-python-serialize", task_headers(process_payment.name), "binary")
    # Then a real payment, behind them on the same queue.
    result = process_payment.delay(order.pk)

    assert result.get(timeout=TIMEOUT) == "paid"
    wait_for(lambda: PoisonMessage.objects.count() == 3, TIMEOUT, "three poison messages")
    records = {poison.reason: poison for poison in PoisonMessage.objects.all()}
    assert set(records) == {"unknown_task", "decode_error", "content_disallowed"}

    poison = records["unknown_task"]
    assert poison.task_name == unknown["task"]
    assert poison.task_id == unknown["id"]
    assert poison.exception_type == "celery.exceptions.NotRegistered"
    assert (poison.body, poison.body_encoding, poison.raw_body()) == (unknown_body.decode(), "text", unknown_body)

    poison = records["decode_error"]
    assert poison.task_name == process_payment.name
    assert poison.content_type == "application/json"
    assert poison.exception_type == "kombu.exceptions.DecodeError"
    assert poison.raw_body() == not_json

    poison = records["content_disallowed"]
    assert poison.exception_type == "kombu.exceptions.ContentDisallowed"
    assert "application/x-python-serialize" in poison.exception_message
    assert poison.body_encoding == "base64"  # pickle is bytes, kept exactly
    assert base64.b64decode(poison.body) == pickled

    for poison in records.values():
        assert poison.queue == "high"
        assert poison.deliveries == 1
        assert poison.body_size == len(poison.raw_body())
        assert not poison.body_truncated
        assert poison.worker == live_celery.hostname("worker-high")
    # The pickle was never unpickled, and the pool is still there and answering.
    assert live_celery.processes["worker-high"].poll() is None
    host = live_celery.hostname("worker-high")
    assert app.control.ping(destination=[host], timeout=2.0)
    # Celery's own report of the unknown task: FAILURE with NotRegistered, for whoever waits on it.
    assert app.AsyncResult(unknown["id"]).state == "FAILURE"


def test_an_unknown_task_replays_once_a_worker_knows_it(live_celery):
    """The record of an unknown task sends the very same message again, e.g. after the deploy that adds the task."""
    user = get_user_model().objects.create_user("late", "late@example.com", "pw")
    order = Order.objects.create(user=user, amount_cents=1234)
    headers = task_headers(process_payment.name)
    body = json.dumps([[order.pk], {}, {"callbacks": None, "errbacks": None, "chain": None}])
    # As an older worker, which did not know process_payment yet, recorded it.
    poison = PoisonMessage.objects.create(
        reason=PoisonMessage.Reason.UNKNOWN_TASK, task_name=process_payment.name, task_id=headers["id"],
        queue="high", content_type="application/json", content_encoding="utf-8", headers=headers,
        body=body, body_size=len(body), fingerprint=uuid.uuid4().hex,
    )  # fmt: skip

    call_command("poison_messages", "replay", str(poison.pk))

    assert app.AsyncResult(headers["id"]).get(timeout=TIMEOUT) == "paid"
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    poison.refresh_from_db()
    assert poison.replayed_at is not None
