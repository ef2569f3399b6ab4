"""The transactional outbox: rows commit with their data, publish once, survive a dead broker.

Tasks run eagerly here (config.settings.test), through the same ``apply_async``
call the relay makes. The tests that need a broker that does not answer point
the outbox at a port where nothing listens, or where a socket accepts and then
never replies; tests/test_outbox_integration.py does the same with real pools.
"""

import os
import socket
import threading
import time
from collections import Counter

import pytest
from celery import signals
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError

from config.celery_app import app

from ... import outbox
from ...payments.models import Order, SandboxCharge
from ...payments.tasks import process_payment
from ...users.tasks import send_password_reset_email
from .. import relay
from ..models import OutboxMessage


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


@pytest.fixture(autouse=True)
def fresh_publisher():
    """Each test starts with no pooled connection and no remembered outage."""
    relay.reset_connections()
    relay._broker_down_until = 0.0
    yield
    relay.reset_connections()
    relay._broker_down_until = 0.0


@pytest.fixture
def task_ids():
    """Ids of the tasks that ran (eagerly), in order: one entry per publish."""
    seen = []

    def record(sender=None, task_id=None, **kwargs):
        seen.append(task_id)

    signals.task_prerun.connect(record, weak=False)
    yield seen
    signals.task_prerun.disconnect(record)


def checkout(user) -> tuple[Order, OutboxMessage]:
    with transaction.atomic():
        order = Order.objects.create(user=user, amount_cents=2500)
        message = outbox.send(process_payment, order.pk)
    return order, message


# --8<-- [start:unit-commit]
def test_commit_writes_the_row_and_publishes_it(transactional_db, user, task_ids):
    order, message = checkout(user)

    message.refresh_from_db()
    assert (message.task_name, message.args, message.kwargs) == (process_payment.name, [order.pk], {})
    assert message.queue == "high"  # from the topology's routes
    assert message.sent_at is not None
    assert message.attempts == 0
    assert task_ids == [str(message.task_id)]  # published after COMMIT, with the row's task id
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


def test_rollback_leaves_no_row_and_sends_nothing(transactional_db, user, task_ids):
    def checkout_that_fails_later():
        with transaction.atomic():
            order = Order.objects.create(user=user, amount_cents=2500)
            outbox.send(process_payment, order.pk)
            raise RuntimeError("a later step of the checkout failed")

    with pytest.raises(RuntimeError):
        checkout_that_fails_later()

    assert not Order.objects.exists()
    assert not OutboxMessage.objects.exists()
    assert task_ids == []
    # --8<-- [end:unit-commit]


def test_send_outside_a_transaction_is_refused(transactional_db, user):
    order = Order.objects.create(user=user, amount_cents=2500)  # autocommit: already committed
    with pytest.raises(TransactionManagementError, match=r"inside transaction\.atomic"):
        outbox.send(process_payment, order.pk)
    assert not OutboxMessage.objects.exists()


def test_arguments_that_are_not_json_fail_in_the_caller(user):
    with pytest.raises(TypeError), transaction.atomic():
        outbox.send(send_password_reset_email, user)  # the user object, not its id


def test_relay_publishes_unsent_rows_and_marks_them_sent(user, task_ids, django_capture_on_commit_callbacks):
    # The process died between its COMMIT and its publish: the hook never runs.
    with django_capture_on_commit_callbacks(execute=False), transaction.atomic():
        message = outbox.send(send_password_reset_email, user.pk)
    assert OutboxMessage.objects.get().sent_at is None

    assert relay.relay_pending() == (1, False)

    message.refresh_from_db()
    assert message.sent_at is not None
    assert task_ids == [str(message.task_id)]
    assert len(mail.outbox) == 1
    assert relay.relay_pending() == (0, False)  # nothing left: nothing published twice


def test_relay_command_once_publishes_the_backlog(user, capsys, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False), transaction.atomic():
        outbox.send(send_password_reset_email, user.pk)

    call_command("outbox_relay", once=True)

    assert capsys.readouterr().out.strip() == "published 1"
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
    assert len(mail.outbox) == 1


def test_a_republished_row_carries_the_same_task_id_and_charges_once(transactional_db, user, task_ids):
    """The relay died after the broker took the message and before sent_at committed."""
    _, message = checkout(user)
    OutboxMessage.objects.filter(pk=message.pk).update(sent_at=None)

    assert relay.relay_pending() == (1, False)

    assert task_ids == [str(message.task_id)] * 2  # the same id twice: recognisably one intent
    assert SandboxCharge.objects.count() == 1  # the idempotent task made the repeat a no-op


# --8<-- [start:unit-skip-locked]
def test_two_relays_at_once_publish_every_row_exactly_once(transactional_db, monkeypatch):
    """Two relay threads against the real broker; every message the broker took is counted."""
    if connection.vendor != "postgresql":
        if os.environ.get("CI"):
            pytest.fail("SKIP LOCKED needs Postgres: set DATABASE_URL=postgres://...")
        pytest.skip("SKIP LOCKED needs Postgres")
    with transaction.atomic():  # 40 messages waiting, as after an outage (their hooks never ran)
        rows = [OutboxMessage(task_name=send_password_reset_email.name, args=[10_000 + n], queue="high")
                for n in range(40)]  # fmt: skip
        OutboxMessage.objects.bulk_create(rows)
    monkeypatch.setitem(app.conf, "task_always_eager", False)  # publish for real
    published_ids, lock = [], threading.Lock()

    def taken_by_the_broker(sender=None, headers=None, **kwargs):
        with lock:
            published_ids.append(headers["id"])
        time.sleep(0.01)  # each publish takes a moment: the two relays overlap

    signals.after_task_publish.connect(taken_by_the_broker, weak=False)
    start, published = threading.Barrier(2), {}

    def run_relay(name):
        start.wait()
        try:
            published[name] = relay.relay_pending(batch_size=4)[0]
        finally:
            connection.close()  # this thread's own database connection

    threads = [threading.Thread(target=run_relay, args=(name,)) for name in ("a", "b")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        signals.after_task_publish.disconnect(taken_by_the_broker)
        with app.connection_for_write() as broker:  # no worker runs here: take the messages back
            app.amqp.queues["high"].bind(broker.default_channel).purge()

    assert Counter(published_ids) == Counter(str(row.task_id) for row in OutboxMessage.objects.all())  # once each
    assert len(published_ids) == 40
    assert published["a"] + published["b"] == 40
    assert published["a"] > 0  # both relays really worked side by side
    assert published["b"] > 0
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
    # --8<-- [end:unit-skip-locked]


# ------------------------------------------------------------------------------
# A broker that is down
# ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def broker_at(port: int) -> str:
    scheme = app.conf.broker_url.split("://", 1)[0]
    if scheme.startswith(("amqp", "pyamqp")):
        return f"amqp://guest:guest@127.0.0.1:{port}//"
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def broker_down(monkeypatch):
    """Point the outbox at a broker that refuses connections; publish for real (not eagerly)."""
    url = broker_at(free_port())
    monkeypatch.setitem(app.conf, "broker_url", url)
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the variable before its config
    monkeypatch.setitem(app.conf, "task_always_eager", False)
    relay.reset_connections()
    return url


@pytest.fixture
def broker_hangs(monkeypatch):
    """A broker that accepts the connection and then never answers (overloaded, half dead)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody ever reads or replies
        url = broker_at(listener.getsockname()[1])
        monkeypatch.setitem(app.conf, "broker_url", url)
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        monkeypatch.setitem(app.conf, "task_always_eager", False)
        relay.reset_connections()
        yield url


# --8<-- [start:unit-broker-down]
def test_broker_down_the_request_answers_at_once_and_the_row_waits(transactional_db, user, broker_down):
    started = time.monotonic()
    order, message = checkout(user)  # COMMIT runs the immediate publish attempt
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"the checkout waited {elapsed:.2f}s on a dead broker"
    message.refresh_from_db()
    assert message.sent_at is None
    assert message.attempts == 1
    assert "Connection refused" in message.last_error or "111" in message.last_error
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING  # committed, and its payment is waiting, not lost

    # The next requests of this process do not even try while the outage lasts.
    second, _ = checkout(user)
    assert OutboxMessage.objects.get(args=[second.pk]).attempts == 0

    # The relay tries, fails the same way, and keeps the rows.
    assert relay.relay_pending() == (0, True)
    message.refresh_from_db()
    assert message.attempts == 2
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 2
    # --8<-- [end:unit-broker-down]


def test_broker_that_never_answers_costs_at_most_the_publish_timeout(transactional_db, user, broker_hangs, settings):
    started = time.monotonic()
    _, message = checkout(user)
    elapsed = time.monotonic() - started

    assert elapsed < settings.OUTBOX_PUBLISH_TIMEOUT + 0.5, f"the checkout waited {elapsed:.2f}s"
    message.refresh_from_db()
    assert message.sent_at is None
    assert message.attempts == 1
    assert message.last_error


def test_broker_back_the_relay_sends_the_backlog_once(transactional_db, user, broker_down, monkeypatch, task_ids):
    orders = [checkout(user)[0] for _ in range(3)]
    assert not task_ids
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 3

    monkeypatch.undo()  # the broker is back (and tasks run eagerly again)
    relay.reset_connections()
    assert relay.relay_pending() == (3, False)

    assert sorted(task_ids) == sorted(str(m.task_id) for m in OutboxMessage.objects.all())
    assert all(Order.objects.get(pk=order.pk).status == Order.Status.PAID for order in orders)
    assert SandboxCharge.objects.count() == 3
