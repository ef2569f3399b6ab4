"""Poison messages: what is recorded, and what the consumer does with the message.

Real kombu messages on kombu's in-memory transport; the worker-level proof (both
brokers, real pools) is ``tests/test_poison_messages_integration.py``.
"""

import base64
import logging
import pickle
import uuid
from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, connections
from django.urls import reverse
from kombu import Connection, Exchange, Queue
from kombu.asynchronous.timer import Timer
from kombu.exceptions import ContentDisallowed, DecodeError

from .. import poison
from ..models import PoisonMessage


@pytest.fixture
def broker():
    """An in-memory broker with one queue of our own; ``send`` puts a raw message on it, ``get`` takes one."""
    name = f"poison-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, "direct"), routing_key=name)
    with Connection("memory://") as connection:
        channel = connection.default_channel
        queue(channel).declare()

        def send(body: bytes, content_type="application/json", encoding="utf-8", headers=None):
            connection.Producer(channel).publish(
                body, exchange=queue.exchange, routing_key=name, headers=headers or {},
                content_type=content_type, content_encoding=encoding,
            )  # fmt: skip

        def get():
            return queue(channel).get(accept=["json"])

        yield type("Broker", (), {"send": staticmethod(send), "get": staticmethod(get), "connection": connection})


@pytest.fixture
def consumer(broker):
    """The worker's consumer with just what its poison hooks use (a timer, the connection errors)."""
    instance = poison.DeadLetterConsumer.__new__(poison.DeadLetterConsumer)
    instance.hostname = "high@test"
    instance.timer = Timer()
    instance.connection_errors = broker.connection.connection_errors
    yield instance
    instance.timer.stop()
    # The records are written by the consumer's writer thread: close its connection too.
    poison._writer().submit(connections.close_all).result()


def test_a_text_body_is_kept_as_text_and_bytes_as_base64(broker):
    broker.send(b'{"not": "a list"', headers={"task": "shop.tasks.gone", "id": "abc"})
    fields = poison.describe(broker.get(), "decode_error", DecodeError("Expecting ','"), "high@test")
    assert (fields["body"], fields["body_encoding"], fields["body_size"]) == ('{"not": "a list"', "text", 16)
    assert fields["task_name"] == "shop.tasks.gone"
    assert fields["task_id"] == "abc"
    assert fields["exception_type"] == "kombu.exceptions.DecodeError"

    pickled = pickle.dumps({"amount": 10})
    broker.send(pickled, "application/x-python-serialize", "binary")
    fields = poison.describe(broker.get(), "content_disallowed", None)
    assert fields["body_encoding"] == "base64"
    assert base64.b64decode(fields["body"]) == pickled

    broker.send(b"{}", headers={"task": "t", "note": "nul\x00here", "nested": [{"k": "\x00"}]})
    headers = poison.describe(broker.get(), "decode_error", None)["headers"]
    assert (headers["note"], headers["nested"]) == ("nul\ufffdhere", [{"k": "\ufffd"}])


def test_a_large_body_is_cut_at_the_limit_and_says_so(broker, settings):
    settings.POISON_MESSAGE_BODY_LIMIT = 10
    broker.send(b"x" * 1000)
    fields = poison.describe(broker.get(), "decode_error", None)
    assert (fields["body"], fields["body_size"], fields["body_truncated"]) == ("x" * 10, 1000, True)


@pytest.mark.django_db(transaction=True)
def test_a_redelivery_counts_on_the_same_record_and_another_message_gets_its_own(broker):
    broker.send(b"oops", headers={"task": "t"})
    broker.send(b"oops", headers={"task": "t", "x-delivery-count": 1})  # RabbitMQ's mark of a redelivery
    broker.send(b"oops!", headers={"task": "t"})
    first, again, other = (poison.record(broker.get(), "decode_error", None) for _ in range(3))
    assert first.pk == again.pk != other.pk
    first.refresh_from_db()
    assert first.deliveries == 2
    assert PoisonMessage.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_consumer_records_then_acknowledges(broker, consumer):
    broker.send(b"{oops", headers={"task": "shop.tasks.pay", "id": "1"})
    message = broker.get()
    consumer.on_decode_error(message, DecodeError("Expecting property name"))
    assert message.acknowledged
    recorded = PoisonMessage.objects.get()
    assert (recorded.reason, recorded.raw_body(), recorded.worker) == ("decode_error", b"{oops", "high@test")

    broker.send(pickle.dumps(1), "application/x-python-serialize", "binary", headers={"task": "shop.tasks.pay"})
    message = broker.get()
    consumer.on_invalid_task(None, message, ContentDisallowed("Refusing to deserialize untrusted content"))
    assert message.acknowledged
    assert PoisonMessage.objects.filter(reason="content_disallowed").count() == 1
    assert broker.get() is None  # nothing left, nothing requeued


@pytest.mark.django_db(transaction=True)
def test_a_message_that_breaks_celerys_own_handler_is_still_recorded_and_acknowledged(broker, consumer):
    # A task header without an id, and a body that is not JSON: Celery's
    # on_unknown_task falls back to decoding the body for the id, and raises.
    broker.send(b"\x00garbage", headers={"task": "shop.tasks.gone"})
    message = broker.get()
    consumer.on_unknown_task(None, message, KeyError("shop.tasks.gone"))
    assert message.acknowledged  # not redelivered (and failing) for ever
    recorded = PoisonMessage.objects.get()
    assert (recorded.reason, recorded.task_name) == ("unknown_task", "shop.tasks.gone")
    assert (recorded.body_encoding, recorded.raw_body()) == ("base64", b"\x00garbage")  # no NUL in a text column
    assert recorded.exception_type == "celery.exceptions.NotRegistered"


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_keeps_the_message_and_requeues_it_later(broker, consumer, monkeypatch, caplog):
    def database_down(*args):
        raise OperationalError("connection refused")

    monkeypatch.setattr(poison, "record", database_down)
    broker.send(b"{oops", headers={"task": "shop.tasks.pay"})
    message = broker.get()
    with caplog.at_level(logging.CRITICAL, logger=poison.__name__):
        consumer.on_decode_error(message, DecodeError("bad"))
    assert not message.acknowledged  # not dropped
    assert "the database is unavailable" in caplog.text
    assert "{oops" in caplog.text  # the log line carries the message too

    (entry,) = consumer.timer.queue  # back to the queue after POISON_MESSAGE_REQUEUE_DELAY
    entry.entry()
    assert message.acknowledged  # requeued: as far as this delivery goes, done
    monkeypatch.undo()
    redelivered = broker.get()
    assert redelivered.body == b"{oops"
    consumer.on_decode_error(redelivered, DecodeError("bad"))  # the database is back
    assert PoisonMessage.objects.get().raw_body() == b"{oops"


@contextmanager
def read_only_database():
    """New sessions of the test database take no writes: what a primary demoted to a standby does."""
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")


@pytest.mark.django_db(transaction=True)
def test_a_read_only_database_keeps_the_message_and_it_is_recorded_once_writable(broker, consumer, caplog):
    """Like an outage, not like a bug: the message is requeued, and recorded on a new connection later."""
    broker.send(b"{oops", headers={"task": "shop.tasks.pay"})
    message = broker.get()
    with read_only_database(), caplog.at_level(logging.CRITICAL, logger=poison.__name__):
        poison._writer().submit(connections.close_all).result()  # its next session starts read-only
        consumer.on_decode_error(message, DecodeError("bad"))
    assert not message.acknowledged  # not dropped
    assert "the database is unavailable" in caplog.text
    assert "read-only transaction" in caplog.text

    (entry,) = consumer.timer.queue  # back to the queue after POISON_MESSAGE_REQUEUE_DELAY
    entry.entry()
    redelivered = broker.get()
    # The database takes writes again; the writer's read-only session would not have.
    consumer.on_decode_error(redelivered, DecodeError("bad"))
    assert redelivered.acknowledged
    assert PoisonMessage.objects.get().raw_body() == b"{oops"


@pytest.mark.django_db(transaction=True)
def test_an_error_that_would_repeat_drops_the_message_loudly(broker, consumer, monkeypatch, caplog):
    def bug(*args):
        raise ValueError("a bug in the recorder")

    monkeypatch.setattr(poison, "record", bug)
    broker.send(b"{oops")
    message = broker.get()
    with caplog.at_level(logging.CRITICAL, logger=poison.__name__):
        consumer.on_decode_error(message, DecodeError("bad"))
    assert message.acknowledged  # requeueing would fail the same way for ever
    assert "dropping it" in caplog.text
    assert "{oops" in caplog.text
    assert consumer.timer.queue == []


def make_poison(**fields):
    defaults = {
        "reason": PoisonMessage.Reason.UNKNOWN_TASK,
        "task_name": "shop.tasks.renamed",
        "queue": "high",
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "body": "[[1], {}, {}]",
        "body_size": 13,
        "exception_type": "celery.exceptions.NotRegistered",
        "fingerprint": uuid.uuid4().hex,
    }
    return PoisonMessage.objects.create(**defaults | fields)


def test_command_lists_and_shows(db, capsys):
    unknown = make_poison()
    pickled = make_poison(
        reason="content_disallowed", body=base64.b64encode(b"\x80\x04").decode(), body_encoding="base64"
    )
    call_command("poison_messages", "list")
    out = capsys.readouterr().out
    assert f"{unknown.pk}\t" in out
    assert "task=shop.tasks.renamed" in out
    call_command("poison_messages", "list", "--reason", "content_disallowed")
    assert capsys.readouterr().out.startswith(f"{pickled.pk}\t")

    call_command("poison_messages", "show", str(pickled.pk))
    out = capsys.readouterr().out
    assert "reason: content_disallowed" in out
    assert "body (base64):\ngAQ=" in out


def test_only_a_deployed_unknown_task_can_be_replayed(db):
    with pytest.raises(CommandError, match="still unknown here"):
        call_command("poison_messages", "replay", str(make_poison().pk))
    with pytest.raises(CommandError, match="cannot be replayed"):
        call_command("poison_messages", "replay", str(make_poison(reason="decode_error").pk))
    with pytest.raises(CommandError, match="no PoisonMessage with id 404"):
        call_command("poison_messages", "show", "404")


def test_admin_lists_poison_messages(db, admin_client):
    make_poison()
    response = admin_client.get(reverse("admin:core_poisonmessage_changelist"))
    assert response.status_code == 200
    assert b"shop.tasks.renamed" in response.content


def test_admin_replay_action_says_why_it_cannot(db, admin_client):
    undecodable = make_poison(reason="decode_error")
    response = admin_client.post(
        reverse("admin:core_poisonmessage_changelist"),
        {"action": "replay", "_selected_action": [undecodable.pk]},
        follow=True,
    )
    assert f"{undecodable.pk}: a message rejected for &#x27;body does not decode&#x27; cannot be replayed" in (
        response.content.decode()
    )
    undecodable.refresh_from_db()
    assert undecodable.replayed_at is None
