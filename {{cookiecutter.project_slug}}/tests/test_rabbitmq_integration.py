"""What RabbitMQ changes, proven on the real server (this file exists only with broker=rabbitmq).

Quorum queues, countdowns held by the broker rather than by a worker (native
delayed delivery), a dead worker's message handed back at once instead of
after Redis's visibility timeout, and a SIGTERM that cannot hang a worker.
"""

import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from amqp.exceptions import MessageNacked, PreconditionFailed
from kombu import Exchange, Queue

from {{ cookiecutter.project_slug }}.core.metrics import queue_depths
from {{ cookiecutter.project_slug }}.core.tasks import dispatch_latency_probes
from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import generate_csv_export

from .conftest import ROOT, wait_for
from .test_exports_integration import clean_export, finished, progress, runners

pytestmark = pytest.mark.integration


def test_task_queues_are_quorum_queues(live_celery):
    app = dispatch_latency_probes.app
    with app.connection_for_write() as connection:
        for name in ("high", "default", "low", "export"):
            # Re-declaring an existing queue with other arguments is refused: proof of its type.
            classic = Queue(
                name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "classic"}
            )
            with pytest.raises(PreconditionFailed, match="x-queue-type"):
                classic.bind(connection.channel()).queue_declare()


def test_publisher_confirms_raise_when_the_broker_refuses_a_message(live_celery):
    """A message RabbitMQ did not take raises in the sender instead of vanishing.

    A quorum queue that holds one message and rejects the rest stands in for any
    refusal (a full disk, a queue at its length limit). Without confirms every
    publish below would "succeed" and the messages would be gone.
    """
    app = dispatch_latency_probes.app
    full = Queue(
        "confirms-probe",
        Exchange("confirms-probe", type="topic"),
        routing_key="confirms-probe",
        queue_arguments={"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"},
    )
    with app.producer_or_acquire() as producer:

        def publish_a_few():
            for _ in range(5):
                producer.publish({"probe": True}, exchange=full.exchange, routing_key=full.routing_key)

        full.bind(producer.channel).declare()
        try:
            with pytest.raises(MessageNacked):
                publish_a_few()
        finally:
            full.bind(producer.channel).delete()


def test_every_pool_set_up_native_delayed_delivery(live_celery):
    """The pools started together in a fresh vhost; each bound every queue (config/celery_app.py)."""
    for pool in ("worker-high", "worker-default", "worker-export"):
        log = live_celery.log(pool)
        assert "ready." in log
        assert "delayed delivery" not in log.lower(), log


def test_a_countdown_waits_in_the_broker_not_in_a_worker(live_celery):
    app, worker_default = dispatch_latency_probes.app, live_celery.hostname("worker-default")
    started = time.monotonic()
    result = dispatch_latency_probes.apply_async(kwargs={"dry_run": True}, countdown=4)
    time.sleep(1)
    # With Redis (or a direct exchange) worker-default would hold the message as a
    # scheduled ETA task, tying up a slot of its prefetch until it is due.
    scheduled = app.control.inspect(destination=[worker_default], timeout=2).scheduled() or {}
    assert scheduled.get(worker_default) == []
    assert result.get(timeout=30) == ["high", "default", "low", "export"]
    assert time.monotonic() - started >= 4


def test_a_killed_worker_hands_its_message_back_at_once(live_celery, demo):
    job = ExportJob.objects.create(user=demo)
    generate_csv_export.delay(job.pk)
    wait_for(lambda: progress(job) >= 0.2, message="20% of the export")

    live_celery.kill("worker-export", signal.SIGKILL, whole_group=True)  # like the OOM killer
    # The connection died with the worker, so RabbitMQ requeued the unacknowledged
    # message at once. (Redis would keep it invisible for the visibility timeout.)
    wait_for(lambda: queue_depths().get("export") == 1, 30, "the export message back in its queue")
    # Restart once the dead runner's lease has expired: the redelivered message
    # takes the job over and resumes it. No watchdog involved.
    wait_for(lambda: ExportJob.stale().filter(pk=job.pk).exists(), message="the lease to expire")
    live_celery.restart("worker-export")

    job = wait_for(lambda: finished(job), message="the resumed export")
    with job.file.open("rb") as handle:
        assert handle.read() == clean_export(demo)
    assert len(runners(job)) == 2  # resumed by a second runner, not restarted from zero


@pytest.mark.parametrize("filename", ["docker-compose.yml", "docker-compose.production.yml"])
def test_compose_rabbitmq_lets_the_longest_task_hold_its_message(filename):
    """RabbitMQ closes the channel of a delivery unacknowledged for consumer_timeout ms.

    With late acks a task holds its message while it runs: the timeout must exceed
    the longest hard time limit, or a long export would be cut off and redelivered.
    """
    from config import topology

    service = yaml.safe_load((ROOT / filename).read_text())["services"]["rabbitmq"]
    args = service["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    timeout_ms = int(re.search(r"-rabbit consumer_timeout (\d+)", args).group(1))
    assert timeout_ms >= topology.VISIBILITY_TIMEOUT * 1000 > topology.longest_time_limit() * 1000


def test_every_pool_writes_frames_with_the_shutdown_safe_writer(live_celery):
    """CELERY_BROKER_TRANSPORT_OPTIONS reaches each pool's connection, and its stats (Flower's too) still encode."""
    from config import topology

    stats = dispatch_latency_probes.app.control.inspect(timeout=5.0).stats() or {}
    for pool in topology.POOLS:
        options = stats[live_celery.hostname(pool.name)]["broker"]["transport_options"]
        assert options["frame_writer"] == "config.amqp_frames.frame_writer"


# A consumer on a RabbitMQ connection whose SIGTERM handler does what Celery's cold
# shutdown does first (cancel the consumer, ignoring connection errors), and a
# SIGTERM that arrives while the main thread is in the middle of writing a frame
# (here: a publish; in a worker, usually an ack). argv: broker URL, "amqp" for
# py-amqp's own frame writer or "ours" for config/amqp_frames.py.
SIGNAL_DURING_A_WRITE = """
import os, signal, sys
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors

options = {"confirm_publish": True}
if sys.argv[2] == "ours":
    from config.amqp_frames import frame_writer
    options["frame_writer"] = frame_writer
with Connection(sys.argv[1], transport_options=options) as connection:
    probe = Queue("signal-probe", Exchange("signal-probe", type="topic"), routing_key="probe", exclusive=True)
    received = []
    consumer = connection.Consumer(probe, callbacks=[lambda body, message: received.append(message.ack())])
    consumer.consume()
    handled = []
    signal.signal(signal.SIGTERM, lambda *_: handled.append(ignore_errors(connection, consumer.cancel)))

    transport = connection.connection.transport
    send = transport._write
    def send_then_signal(data):  # inside amqp's frame writer: the frame is half written
        transport._write = send
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs as soon as this call returns
        send(data)
    transport._write = send_then_signal
    connection.Producer().publish({"n": 1}, exchange=probe.exchange, routing_key="probe", declare=[probe])
    while not received:  # the message comes back (perhaps already, while the publish waited for its confirm)
        connection.drain_events(timeout=5)
    print(f"handled {len(handled)} signal, shut down cleanly")
"""


@pytest.mark.parametrize(("writer", "hangs"), [("amqp", True), ("ours", False)])
def test_a_signal_during_a_frame_write_cannot_deadlock_the_shutdown(broker_url, writer, hangs):
    """config/amqp_frames.py: SIGTERM while a frame is being written stops the process, not hangs it.

    With amqp's own writer the handler's cancel waits forever for the frame lock
    its own thread holds. That case is asserted too: the day a release of amqp
    (or Celery) fixes it, this test fails and config/amqp_frames.py can go.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_DURING_A_WRITE, broker_url, writer],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        assert hangs, f"{writer}: the process hung:\n{output}"
    else:
        assert not hangs, f"{writer}: no hang, amqp may have fixed it:\n{output}"
        assert process.returncode == 0, output
        assert "handled 1 signal, shut down cleanly" in output
