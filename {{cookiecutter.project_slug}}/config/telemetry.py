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

What a span carries out of the process is an allow-list (``PrivateSpanExporter``,
the rule of config/privacy.py): the instrumentations record full URLs, with reset
tokens in the path and email addresses in the query, and exception messages.
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
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from config import topology
from config.privacy import allowed, redact, redact_url

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
    _provider.add_span_processor(BatchSpanProcessor(PrivateSpanExporter(OTLPSpanExporter())))
    trace.set_tracer_provider(_provider)

    DjangoInstrumentor().instrument()  # a span per request (a middleware added to MIDDLEWARE)
    CeleryInstrumentor().instrument()  # publish and run spans, and the traceparent message header
    PsycopgInstrumentor().instrument()  # a span per SQL query (statements, never parameters)
    return True
    # --8<-- [end:setup]


# --8<-- [start:private-spans]
# Span attributes exported as they are: written by the code or the protocol, not by a user.
PLAIN_ATTRIBUTES = {
    "http.method",
    "http.request.method",
    "http.route",
    "http.scheme",
    "url.scheme",
    "http.flavor",
    "network.protocol.version",
    "http.status_code",
    "http.response.status_code",
    "net.host.name",
    "server.address",
    "celery.action",
    "celery.task_name",
    "celery.state",
    "messaging.system",
    "messaging.destination",
    "messaging.destination.name",
    "messaging.destination_kind",
    "messaging.message.id",
    "messaging.operation",
    "messaging.conversation_id",
    "db.system",
    "db.name",
    "db.statement",  # SQL with its placeholders: psycopg's instrumentation never records parameters
    "exception.type",
    "exception.stacktrace",
    "exception.escaped",
}
# Attributes that hold a URL or a path: exported without the query, the path redacted.
URL_ATTRIBUTES = {"http.url", "url.full", "http.target", "url.path"}


def private_attributes(attributes) -> dict:
    """The attributes that may leave: plain ones, URLs redacted, free text redacted, and numbers."""
    kept = {}
    for name, value in (attributes or {}).items():
        if name in PLAIN_ATTRIBUTES:
            kept[name] = value
        elif name in URL_ATTRIBUTES and isinstance(value, str):
            kept[name] = redact_url(value)
        elif name == "exception.message" and isinstance(value, str):
            kept[name] = redact(value)
        elif isinstance(value, int | float | bool) and allowed(value):
            kept[name] = value
    return kept


class PrivateSpanExporter(SpanExporter):
    """Hands the exporter (OTLP) a copy of each span with only ``private_attributes()``.

    At the exit, not in each instrumentation's hooks: a new instrumentation, or a
    new attribute of an old one, is left out until it is allowed here.
    """

    def __init__(self, exporter: SpanExporter):
        self.exporter = exporter

    def export(self, spans) -> SpanExportResult:
        return self.exporter.export([self.private(span) for span in spans])

    @staticmethod
    def private(span: ReadableSpan) -> ReadableSpan:
        return ReadableSpan(
            name=redact(span.name),
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=private_attributes(span.attributes),
            events=[Event(event.name, private_attributes(event.attributes), event.timestamp) for event in span.events],
            links=span.links,
            kind=span.kind,
            # An error's description is its exception's message.
            status=Status(span.status.status_code, redact(span.status.description or "") or None),
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
        # --8<-- [end:private-spans]


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
