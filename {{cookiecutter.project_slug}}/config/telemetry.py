"""OpenTelemetry: one trace from a web request, through the outbox, into the worker that runs the task.

Off until ``OTEL_EXPORTER_OTLP_ENDPOINT`` names a collector (``http://collector:4318``):
without it ``setup()`` does nothing, and nothing is traced or exported. With it, every
process sends its spans over OTLP/HTTP, named by ``service.name``:

* ``web``: ``config/wsgi.py`` (gunicorn imports it in each worker, after the fork) and
  ``manage.py runserver``;
* ``worker-high``, ``worker-default``, ...: each prefork pool child, right after the
  fork (``worker_process_init``). A ``BatchSpanProcessor`` exports from a thread of
  its own, and a thread does not survive ``fork()``: a provider set up in the parent
  would leave every child with a queue that nobody sends;
* ``beat``, and ``outbox-relay`` (any other management command is named after itself).

The trace crosses processes in the message: Celery's instrumentation writes the W3C
``traceparent`` header when a task is published and continues the trace from it when
the task runs. ``delay_on_commit`` publishes inside the request, so its span is the
parent. The outbox publishes later, maybe from the relay process minutes after the
request ended: ``trace_context()`` saves the request's trace in the outbox row, and
``continue_trace()`` publishes the row inside it (``outbox/relay.py``).

Standard ``OTEL_*`` variables tune the rest: ``OTEL_EXPORTER_OTLP_HEADERS`` (an API
key), ``OTEL_RESOURCE_ATTRIBUTES`` (``deployment.environment=production``),
``OTEL_TRACES_SAMPLER`` (``parentbased_traceidratio``), ``OTEL_BSP_*`` (batching).
"""

import os
from contextlib import contextmanager

from celery import signals
from opentelemetry import context, propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from config import topology

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# This process's provider, once set up (one per process: OpenTelemetry's global
# tracer provider can be set only once).
_provider: TracerProvider | None = None


# --8<-- [start:setup]
def setup(service_name: str) -> bool:
    """Trace this process as ``service_name``; False (and nothing done) without an OTLP endpoint."""
    global _provider
    if _provider is not None or not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    # OTEL_RESOURCE_ATTRIBUTES adds to the resource; the process's own name wins.
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    # Spans are queued and sent in batches by a background thread, never in the
    # request or the task. The exporter reads the endpoint and headers from OTEL_*.
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)

    DjangoInstrumentor().instrument()  # a span per request (a middleware added to MIDDLEWARE)
    CeleryInstrumentor().instrument()  # publish and run spans, and the traceparent message header
    PsycopgInstrumentor().instrument()  # a span per SQL query (statements, never parameters)
    return True
    # --8<-- [end:setup]


def shutdown() -> None:
    """Send the spans still queued (a process that exits without this loses its last batch)."""
    if _provider is not None:
        _provider.shutdown()


# --8<-- [start:outbox]
def trace_context() -> dict[str, str]:
    """The current trace as W3C headers (``traceparent``, ``tracestate``): saved with an outbox row.

    Empty when nothing is traced (no endpoint, or a request the sampler dropped).
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def continue_trace(carrier: dict[str, str]):
    """Run the block inside the trace ``carrier`` was saved from (``trace_context()``).

    The relay publishes a row inside the trace of the request that wrote it: the
    publish span, and through the message's traceparent the task's spans, join
    that trace, however much later the row is published. The previous context is
    restored on the way out, also when an instrumentation left one attached (a
    publish that failed before Celery's ``after_task_publish``).
    """
    token = context.attach(propagate.extract(carrier) if carrier else context.get_current())
    try:
        yield
    finally:
        context.detach(token)
        # --8<-- [end:outbox]


# --8<-- [start:celery-signals]
# config/celery_app.py imports this module: these receivers set tracing up in every
# Celery process. Nothing is set up in a prefork worker's parent: it runs no task.
_worker_service = "worker"


@signals.celeryd_init.connect
def _name_the_pool(sender: str, **kwargs) -> None:
    """In the worker's parent, before the fork: remember the pool (``high@host`` is ``worker-high``)."""
    global _worker_service
    node = sender.split("@")[0].removeprefix(os.environ.get("WORKER_NODE_PREFIX", ""))
    try:
        _worker_service = topology.pool_named(node).name
    except KeyError:
        _worker_service = f"worker-{node}"


@signals.worker_process_init.connect
def _trace_pool_child(**kwargs) -> None:
    setup(_worker_service)


@signals.worker_process_shutdown.connect
def _flush_pool_child(**kwargs) -> None:
    # A child exits when it is recycled (max tasks or memory per child) and at
    # shutdown. A child killed outright (SIGKILL, the OOM killer) loses its last batch.
    shutdown()


@signals.beat_init.connect
def _trace_beat(**kwargs) -> None:
    setup("beat")
    # --8<-- [end:celery-signals]
