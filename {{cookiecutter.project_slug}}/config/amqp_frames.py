"""py-amqp's frame writer, made safe for the shutdown that Celery runs inside a signal handler.

A worker here stops on SIGTERM with Celery's cold shutdown (``REMAP_SIGTERM``,
config/worker.py), and Celery runs that shutdown *in the signal handler*: in the
main thread, between any two bytecodes of whatever the event loop was doing. Its
first step cancels the consumer, a ``basic_cancel`` frame written to RabbitMQ.
Since amqp 5.4 every frame of a connection is written under one lock, which a
thread cannot take twice. When the signal lands while the loop is writing a frame
itself (acknowledging a finished task, say), the handler waits for a lock that
its own thread holds, forever: the worker hangs until Docker's (or Kubernetes')
SIGKILL. Seen here as a ``make test`` pool that ignored SIGTERM for minutes.

This writer refuses to start a frame while the same thread is writing one: the
nested write raises a connection error at once. Celery's shutdown ignores
connection errors around that cancel (kombu's ``ignore_errors``) and carries on,
the interrupted frame is then written out whole, and whatever the worker has not
acknowledged when its connection closes goes back to the queue (late acks).
Threads other than the writing one still wait for the lock, as amqp intends.

``CELERY_BROKER_TRANSPORT_OPTIONS`` passes it to every connection: kombu hands
transport options to ``amqp.Connection``, whose ``frame_writer`` argument it is.
Proven by tests/test_rabbitmq_integration.py::test_a_signal_during_a_frame_write_cannot_deadlock_the_shutdown.
"""

import threading

from amqp import method_framing
from amqp.exceptions import RecoverableConnectionError


# --8<-- [start:frame-writer]
class FrameWriter:
    """Makes amqp's own writer for a connection, wrapped: not re-entered by the thread already in it."""

    def __call__(self, connection, transport, **kwargs):
        write_frame = method_framing.frame_writer(connection, transport, **kwargs)
        writing = threading.local()

        def write_frame_unless_nested(*args, **kwargs):
            if getattr(writing, "active", False):
                raise RecoverableConnectionError("a frame is already being written by this thread (a signal handler?)")
            writing.active = True
            try:
                return write_frame(*args, **kwargs)
            finally:
                writing.active = False

        return write_frame_unless_nested

    def __json__(self) -> str:
        """Its name where the transport options are shown (``celery inspect stats``, Flower): kombu's JSON."""
        return f"{__name__}.frame_writer"


frame_writer = FrameWriter()
# --8<-- [end:frame-writer]
