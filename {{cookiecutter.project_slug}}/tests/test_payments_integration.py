"""Payments and password resets on real worker pools, real Redis, real Postgres.

What these prove is what unit tests cannot: concurrent deliveries, a worker
process killed between the provider's charge and our commit, retries with
backoff across processes, the dead letter, and dispatch after commit.
"""

import os
import signal
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from {{ cookiecutter.project_slug }}.core.models import FailedTask
from {{ cookiecutter.project_slug }}.payments.models import Order, SandboxCharge
from {{ cookiecutter.project_slug }}.payments.providers import SandboxProvider
from {{ cookiecutter.project_slug }}.payments.tasks import process_payment, reconcile_stuck_payments
from {{ cookiecutter.project_slug }}.payments.tests.fake_stripe import API_KEY
from {{ cookiecutter.project_slug }}.users.models import PasswordResetRequest
from {{ cookiecutter.project_slug }}.users.tasks import send_password_reset_email

from .conftest import wait_for

pytestmark = pytest.mark.integration
app = process_payment.app
TIMEOUT = 60


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


def test_32_concurrent_deliveries_of_two_orders_charge_exactly_twice(live_celery, user, sandbox):
    orders = [Order.objects.create(user=user, amount_cents=1000 + i) for i in range(2)]
    for order in orders:  # a little provider latency widens the race window
        sandbox.plan(order.idempotency_key, "slow:0.2", "slow:0.2", "slow:0.2", "slow:0.2")

    results = [process_payment.delay(orders[i % 2].pk) for i in range(32)]
    outcomes = [result.get(timeout=TIMEOUT) for result in results]

    assert outcomes.count("paid") == 2, outcomes
    assert set(outcomes) <= {"paid", "already-paid"}
    assert SandboxCharge.objects.count() == 2
    for order in orders:
        order.refresh_from_db()
        assert order.status == Order.Status.PAID
        assert SandboxCharge.objects.get(idempotency_key=str(order.idempotency_key)).charge_id == order.charge_id


# --8<-- [start:worker-killed]
def test_worker_killed_after_the_charge_and_before_the_commit_charges_once(live_celery, user, sandbox):
    order = Order.objects.create(user=user, amount_cents=7777)
    sandbox.plan(order.idempotency_key, "hang_after_charge:30")

    result = process_payment.delay(order.pk)
    wait_for(lambda: SandboxCharge.objects.filter(idempotency_key=str(order.idempotency_key)).exists(),
               message="the provider to charge")  # fmt: skip
    host = live_celery.hostname("worker-high")
    active = app.control.inspect(destination=[host], timeout=2.0).active()[host]
    (running,) = [task for task in active if task["id"] == result.id]
    os.kill(running["worker_pid"], signal.SIGKILL)  # the process dies before step 3 commits

    assert result.get(timeout=TIMEOUT) == "paid"  # retried (retry_on_worker_lost), same task id
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert order.payment_attempts == 2
    assert SandboxCharge.objects.count() == 1
    # --8<-- [end:worker-killed]


def test_provider_timeouts_then_success_charge_once(live_celery, user, sandbox):
    order = Order.objects.create(user=user, amount_cents=1234)
    sandbox.plan(order.idempotency_key, "timeout", "timeout_after_charge", "ok")

    result = process_payment.delay(order.pk)

    assert result.get(timeout=TIMEOUT) == "paid"
    assert result.retries == 2
    order.refresh_from_db()
    assert order.payment_attempts == 3
    assert SandboxCharge.objects.count() == 1
    assert not FailedTask.objects.exists()


def test_missing_order_finishes_without_retry(live_celery):
    result = process_payment.delay(999_999)

    assert result.get(timeout=TIMEOUT) == "missing"
    assert result.retries == 0
    assert not FailedTask.objects.exists()


def test_exhausted_retries_leave_a_failed_task_that_replays(live_celery, user, sandbox, settings):
    order = Order.objects.create(user=user, amount_cents=4321)
    attempts = settings.TASK_RETRY_POLICY["max_retries"] + 1
    sandbox.plan(order.idempotency_key, *["timeout"] * attempts)

    result = process_payment.delay(order.pk)
    with pytest.raises(Exception, match="timed out"):
        result.get(timeout=TIMEOUT)

    # The result is stored first, then on_failure writes the dead letter.
    wait_for(FailedTask.objects.exists, message="the FailedTask row")
    failed = FailedTask.objects.get()
    assert (failed.task_name, failed.args, failed.queue) == (process_payment.name, [order.pk], "high")
    assert failed.retries == settings.TASK_RETRY_POLICY["max_retries"]
    assert "ProviderTimeout" in failed.traceback

    replay = app.AsyncResult(failed.replay())
    assert replay.get(timeout=TIMEOUT) == "paid"
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert SandboxCharge.objects.count() == 1


# --8<-- [start:late-replay]
def test_a_dead_letter_replayed_after_the_key_expired_does_not_charge_again(live_celery, user, sandbox, settings):
    """The provider charged, its answer was lost, every retry timed out: a dead letter. Days later
    an operator replays it. The provider has forgotten the key; the task looks before it charges."""
    order = Order.objects.create(user=user, amount_cents=5150)
    retries = settings.TASK_RETRY_POLICY["max_retries"]
    sandbox.plan(order.idempotency_key, "timeout_after_charge", *["timeout"] * retries)
    with pytest.raises(Exception, match="timed out"):
        process_payment.delay(order.pk).get(timeout=TIMEOUT)
    failed = wait_for(FailedTask.objects.first, message="the FailedTask row")
    assert SandboxCharge.objects.count() == 1  # charged once, and we never learned it

    three_days_ago = timezone.now() - timedelta(days=3)  # the order, its charge: the key is forgotten
    Order.objects.filter(pk=order.pk).update(created_at=three_days_ago)
    SandboxCharge.objects.update(created_at=three_days_ago)

    assert app.AsyncResult(failed.replay()).get(timeout=TIMEOUT) == "paid"
    order.refresh_from_db()
    assert (order.status, order.charge_id) == (Order.Status.PAID, SandboxCharge.objects.get().charge_id)
    assert SandboxCharge.objects.count() == 1  # the same key alone would have charged again
    # --8<-- [end:late-replay]


def test_reconciliation_gives_up_once_and_its_dead_letter_replays(live_celery, user, settings):
    """Reconciliation on worker-default, as beat runs it: after its last attempt, one dead letter
    however many cycles follow; the operator's replay then pays the order."""
    order = Order.objects.create(user=user, amount_cents=6100, status=Order.Status.PROCESSING)
    # The state after PAYMENT_RECONCILE_MAX_ATTEMPTS cycles of a provider outage.
    stuck = timezone.now() - timedelta(minutes=settings.PAYMENT_STUCK_AFTER_MINUTES + 1)
    Order.objects.filter(pk=order.pk).update(
        payment_attempts=1, reconcile_attempts=settings.PAYMENT_RECONCILE_MAX_ATTEMPTS, updated_at=stuck
    )

    for _ in range(3):
        assert reconcile_stuck_payments.delay().get(timeout=TIMEOUT) == []

    order.refresh_from_db()
    assert (order.status, order.reconcile_gave_up_at is not None) == (Order.Status.PROCESSING, True)
    failed = FailedTask.objects.get()  # one, after three cycles (the log line: test_stripe_payments.py)
    assert "re-sends by reconciliation" in failed.exception_message

    assert app.AsyncResult(failed.replay()).get(timeout=TIMEOUT) == "paid"  # provider back: the operator replays
    assert SandboxCharge.objects.count() == 1


# --8<-- [start:dispatch-races-commit]
def test_dispatch_inside_the_transaction_races_the_commit(live_celery, user):
    """The wrong way, shown failing: the worker looks before the row is committed."""
    with transaction.atomic():
        order = Order.objects.create(user=user, amount_cents=500)
        result = process_payment.delay(order.pk)  # sent now, committed later
        outcome = result.get(timeout=TIMEOUT)  # the worker has already looked

    assert outcome == "missing"
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING  # never charged
    # --8<-- [end:dispatch-races-commit]


def test_checkout_dispatches_after_commit_so_the_worker_always_finds_the_order(live_celery, user, client):
    client.force_login(user)
    log_start = len(live_celery.log("worker-high"))

    for _ in range(10):
        form = {"amount": "25.00", "currency": "EUR", "payment_method": "pm_card_visa"}
        response = client.post(reverse("payments:checkout"), form | {"submission_key": str(uuid.uuid4())})
        assert response.status_code == 302

    wait_for(lambda: Order.objects.filter(status=Order.Status.PAID).count() == 10, message="10 paid orders")
    assert SandboxCharge.objects.count() == 10
    assert "does not exist" not in live_celery.log("worker-high")[log_start:]


def test_password_reset_request_delivered_twice_sends_one_email(live_celery, user):
    request = PasswordResetRequest.objects.create(user=user)

    results = [send_password_reset_email.delay(user.pk, request.pk) for _ in range(4)]
    outcomes = sorted(result.get(timeout=TIMEOUT) for result in results)

    assert outcomes == ["already-sent"] * 3 + ["sent"]
    request.refresh_from_db()
    assert request.sent_at is not None


def test_sigterm_lets_a_running_payment_finish(live_celery, user, sandbox):
    """A deploy's SIGTERM: the high pool's soft shutdown lets the running task complete."""
    import signal

    order = Order.objects.create(user=user, amount_cents=999)
    sandbox.plan(order.idempotency_key, "slow:3")
    result = process_payment.delay(order.pk)
    wait_for(lambda: Order.objects.filter(pk=order.pk, status=Order.Status.PROCESSING).exists(),
               message="the payment to start")  # fmt: skip

    try:
        # Celery's soft shutdown waits out the pool's soft_shutdown_timeout (30 s) before exiting.
        live_celery.kill("worker-high", signal.SIGTERM, timeout=90)
        assert result.get(timeout=5) == "paid"  # finished during the shutdown, not cancelled
    finally:
        live_celery.restart("worker-high")
    assert SandboxCharge.objects.count() == 1


def test_a_refused_request_fails_for_good_with_one_dead_letter_and_is_never_resent(live_celery, user, sandbox):
    order = Order.objects.create(user=user, amount_cents=4321, payment_method="pm_card_visa")
    sandbox.plan(order.idempotency_key, "reject")  # as for a bug of ours: an invalid request

    result = process_payment.delay(order.pk)
    with pytest.raises(Exception, match="400 invalid request"):
        result.get(timeout=TIMEOUT)

    wait_for(FailedTask.objects.exists, message="the FailedTask row")
    order.refresh_from_db()
    assert (order.status, order.payment_attempts) == (Order.Status.FAILED, 1)  # no retry
    Order.objects.filter(pk=order.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    assert reconcile_stuck_payments.delay().get(timeout=TIMEOUT) == []  # on worker-default, as beat runs it
    assert FailedTask.objects.count() == 1


def test_3d_secure_on_the_pools_settles_by_reconciliation(live_celery, user):
    """The customer authenticated, the notification never came: reconciliation asks and pays."""
    order = Order.objects.create(user=user, amount_cents=5555, payment_method="pm_card_threeDSecure2Required")

    assert process_payment.delay(order.pk).get(timeout=TIMEOUT) == "requires-action"
    order.refresh_from_db()
    assert not SandboxCharge.objects.exists()
    SandboxProvider().authenticate(order.charge_id, succeed=True)
    Order.objects.filter(pk=order.pk).update(updated_at=timezone.now() - timedelta(hours=1))

    assert reconcile_stuck_payments.delay().get(timeout=TIMEOUT) == [order.pk]

    wait_for(lambda: Order.objects.filter(pk=order.pk, status=Order.Status.PAID).exists(), message="the payment")
    assert SandboxCharge.objects.get().charge_id == order.charge_id


# ------------------------------------------------------------------------------
# The same guarantees with Stripe: worker-high talks to the fake Stripe over HTTP
# through StripeProvider and the real stripe client.
# ------------------------------------------------------------------------------
@pytest.fixture
def stripe_pool(live_celery, stripe_payments):
    """worker-high restarted with Stripe settings (STRIPE_API_BASE: the fake); restored afterwards."""
    plain = live_celery.env
    live_celery.kill("worker-high", signal.SIGTERM, timeout=90)
    live_celery.env = plain | {"STRIPE_SECRET_KEY": API_KEY, "STRIPE_API_BASE": stripe_payments.url}
    try:
        live_celery.restart("worker-high")
        yield stripe_payments
    finally:
        live_celery.env = plain
        try:
            live_celery.kill("worker-high", signal.SIGTERM, timeout=90)
        finally:
            live_celery.restart("worker-high")  # even after a failed stop: the next tests need the pool


def test_16_concurrent_deliveries_through_stripe_create_one_payment_intent(stripe_pool, user):
    order = Order.objects.create(user=user, amount_cents=2000, payment_method="pm_card_visa")
    stripe_pool.script(("slow", 0.5))  # the first request takes a while: the others collide with it

    results = [process_payment.delay(order.pk) for _ in range(16)]
    outcomes = [result.get(timeout=TIMEOUT) for result in results]

    assert outcomes.count("paid") == 1, outcomes
    # A delivery that reaches Stripe while the first is still there gets 409 "key in
    # use" and ends; one that comes later finds the order paid.
    assert set(outcomes) <= {"paid", "already-paid", "in-progress-elsewhere"}, outcomes
    assert stripe_pool.creates() == 1
    order.refresh_from_db()
    assert (order.status, order.charge_id) == (Order.Status.PAID, next(iter(stripe_pool.intents)))


def test_worker_killed_while_stripe_answers_charges_once(stripe_pool, live_celery, user):
    order = Order.objects.create(user=user, amount_cents=3000, payment_method="pm_card_visa")
    stripe_pool.script(("hang_after_create", 30))  # created at Stripe, answer held back

    result = process_payment.delay(order.pk)
    wait_for(stripe_pool.creates, message="Stripe to create the PaymentIntent")
    host = live_celery.hostname("worker-high")
    active = app.control.inspect(destination=[host], timeout=2.0).active()[host]
    (running,) = [task for task in active if task["id"] == result.id]
    os.kill(running["worker_pid"], signal.SIGKILL)

    assert result.get(timeout=TIMEOUT) == "paid"  # the retry's request, same key: Stripe's saved answer
    order.refresh_from_db()
    assert (order.status, order.payment_attempts) == (Order.Status.PAID, 2)
    assert stripe_pool.creates() == 1
    assert [request["key"] for request in stripe_pool.requests] == [str(order.idempotency_key)] * 2
