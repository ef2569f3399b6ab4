"""One trace from a web request into the worker, across processes, exported over OTLP/HTTP.

A collector of the test's own (``Collector``: an HTTP server on a free port that
accepts ``POST /v1/traces`` and decodes the protobuf, as an OpenTelemetry collector
would) receives the spans of real processes started from the Procfile: ``web``,
``worker-high`` (the session's pool, restarted with the endpoint set) and
``outbox-relay``. A password reset request writes an outbox row; the task's span
must arrive from the worker in the request's trace, its parent chain reaching the
request's span: when the request publishes the row itself after COMMIT, and when
the broker was down and the relay publishes it later.
"""

import gzip
import http.client
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.contrib.auth import get_user_model
from django.utils.crypto import get_random_string

# opentelemetry-proto: installed with opentelemetry-exporter-otlp-proto-http, same version.
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from {{ cookiecutter.project_slug }}.outbox.models import OutboxMessage
from {{ cookiecutter.project_slug }}.users.models import PasswordResetRequest

from .conftest import ROOT, free_port, start_process, stop_processes, wait_for

pytestmark = pytest.mark.integration
TASK = "users.tasks.send_password_reset_email"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str  # SERVER, PRODUCER, CONSUMER, CLIENT, INTERNAL
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    message_id: str  # Celery's spans: the task id


class Collector:
    """The OTLP/HTTP traces endpoint: ``POST /v1/traces`` with an ExportTraceServiceRequest."""

    def __init__(self):
        self.spans: list[Span] = []
        self.raw: list[bytes] = []  # every export as it arrived, for "no secret anywhere"
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
                    self.send_error(404)
                    return
                collector.raw.append(body)
                collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.lock = threading.Lock()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                with self.lock:
                    self.spans.extend(
                        Span(
                            service=attributes["service.name"],
                            name=span.name,
                            kind=SpanProto.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            message_id=next(
                                (a.value.string_value for a in span.attributes if a.key == "messaging.message.id"), ""
                            ),
                        )
                        for span in scope_spans.spans
                    )

    def task_span(self, task_id: str | None) -> Span | None:
        """The worker's span of the run of ``task_id`` (None: of the password reset task)."""
        with self.lock:
            runs = [s for s in self.spans if s.kind == "CONSUMER" and s.name.endswith(TASK)]
        return next((s for s in runs if task_id in (None, s.message_id)), None)

    def chain(self, span: Span) -> list[Span]:
        """``span`` and its ancestors, as far as they have arrived, up to the root."""
        with self.lock:
            by_id = {s.span_id: s for s in self.spans}
        chain = [span]
        while chain[-1].parent_id in by_id:
            chain.append(by_id[chain[-1].parent_id])
        return chain


@pytest.fixture(scope="module")
def collector():
    collector = Collector()
    collector.thread.start()
    yield collector
    collector.server.shutdown()
    collector.server.server_close()


@pytest.fixture(autouse=True)
def _fresh_spans(collector):
    with collector.lock:
        collector.spans.clear()
        collector.raw.clear()


@pytest.fixture(scope="module")
def traced_env(collector):
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export every 200 ms, not every 5 s
    }


@pytest.fixture(scope="module")
def traced_worker(worker_pools, traced_env):
    """The session's worker-high, restarted with the endpoint set; restarted without it afterwards."""
    worker_pools.kill("worker-high", signal.SIGTERM)
    worker_pools.restart("worker-high", **traced_env)
    yield worker_pools
    worker_pools.kill("worker-high", signal.SIGTERM)
    worker_pools.restart("worker-high")


@pytest.fixture
def start(traced_worker, traced_env, tmp_path):
    """Start a Procfile process, traced, on the test database and broker (``env``: overrides)."""
    processes = []

    def start(name: str, **env: str) -> subprocess.Popen:
        log = tmp_path / f"{name}-{len(processes)}.log"
        process = start_process(name, traced_worker.env | traced_env | env, log)
        processes.append(process)
        return process

    yield start
    stop_processes(processes)


def post(port: int, path: str, body: str) -> int | None:
    """POST a form as a browser with a CSRF cookie would; the status, or None while nothing listens."""
    token = get_random_string(32)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={token}",
        "X-CSRFToken": token,
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def unreachable(url: str) -> str:
    """``url`` with a port nothing listens on."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    address = f"127.0.0.1:{free_port()}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


def start_web(start, **env: str) -> int:
    port = free_port()
    process = start("web", PORT=str(port), **env)
    wait_for(lambda: process.poll() is not None or post(port, "/healthz", "") is not None, 60, "web to listen")
    assert process.poll() is None, "web exited"
    return port


def request_password_reset(port: int):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    assert post(port, "/accounts/password_reset/", "email=ada%40example.com") == 302
    return user


def trace_of(collector: Collector, task_id: str | None) -> list[Span]:
    """The span of the task's run and its ancestors, once the root (the request's span) has arrived."""
    task = wait_for(lambda: collector.task_span(task_id), 30, f"the span of task {task_id}")

    def whole_chain():
        chain = collector.chain(task)
        return chain if chain[-1].parent_id == "" else None

    wait_for(whole_chain, 30, "the task's parents up to a root span")
    chain = collector.chain(task)
    assert chain[-1].kind == "SERVER", f"the trace starts elsewhere: {chain}"
    return chain


def assert_one_trace(collector: Collector, publisher: str) -> None:
    """The task ran on worker-high, published by ``publisher``, in the trace of the web request."""
    message = OutboxMessage.objects.get()
    task, publish, request = trace_of(collector, str(message.task_id))
    assert (task.service, task.kind) == ("worker-high", "CONSUMER")
    # Celery's publish span, in the process that published the row, is the task's parent.
    assert (publish.service, publish.kind, publish.message_id) == (publisher, "PRODUCER", str(message.task_id))
    assert (request.service, request.kind) == ("web", "SERVER")
    assert "password_reset" in request.name
    assert {span.trace_id for span in (task, publish, request)} == {request.trace_id}


def test_the_task_runs_in_the_trace_of_the_request_that_sent_it(collector, start):
    port = start_web(start)
    request_password_reset(port)  # the request publishes its outbox row right after COMMIT

    wait_for(lambda: PasswordResetRequest.objects.filter(sent_at__isnull=False).exists(), 60, "the email")
    assert OutboxMessage.objects.get().trace_context["traceparent"]
    assert_one_trace(collector, publisher="web")


def test_a_row_the_relay_publishes_later_continues_the_requests_trace(collector, start, traced_worker):
    # The request's own publish fails (nothing listens where its broker should be):
    # the row stays unsent, with the request's trace saved in it.
    port = start_web(start, CELERY_BROKER_URL=unreachable(traced_worker.env["CELERY_BROKER_URL"]))
    request_password_reset(port)
    wait_for(lambda: OutboxMessage.objects.filter(attempts=1).exists(), 30, "the failed immediate publish")
    assert not PasswordResetRequest.objects.filter(sent_at__isnull=False).exists()

    start("outbox-relay", OUTBOX_RELAY_INTERVAL="0.2")  # minutes later, in production
    wait_for(lambda: PasswordResetRequest.objects.filter(sent_at__isnull=False).exists(), 60, "the email")
    assert_one_trace(collector, publisher="outbox-relay")


def test_delay_on_commit_continues_the_trace_of_the_transaction(collector, traced_worker, traced_env):
    """``delay_on_commit`` publishes in the process that commits, inside its current span."""
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    reset = PasswordResetRequest.objects.create(user=user)
    script = f"""
from django.db import transaction
from opentelemetry import trace
from {{ cookiecutter.project_slug }}.users.tasks import send_password_reset_email

with trace.get_tracer("test").start_as_current_span("checkout", kind=trace.SpanKind.SERVER):
    with transaction.atomic():
        send_password_reset_email.delay_on_commit({user.pk}, {reset.pk})
"""
    command = [sys.executable, "manage.py", "shell", "-c", script]
    shell = subprocess.run(command, cwd=ROOT, env=traced_worker.env | traced_env, capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    wait_for(lambda: PasswordResetRequest.objects.filter(sent_at__isnull=False).exists(), 60, "the email")

    task, publish, transaction_span = trace_of(collector, task_id=None)
    assert [span.service for span in (task, publish, transaction_span)] == ["worker-high", "shell", "shell"]
    assert transaction_span.name == "checkout"
    assert {span.trace_id for span in (task, publish, transaction_span)} == {transaction_span.trace_id}


def get(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def test_spans_carry_the_route_not_the_tokens_and_addresses_in_a_url(collector, start):
    """Full URLs hold reset tokens in the path and addresses in the query: only the
    route, the redacted path and plain attributes leave the process (config/telemetry.py)."""
    token = f"c0ffee-{secrets.token_hex(16)}"
    email = f"{secrets.token_hex(6)}@example.com"
    port = start_web(start)
    assert get(port, f"/accounts/reset/MQ/{token}/?email={email}&next=/orders/") == 200
    assert post(port, "/accounts/password_reset/", f"email={email}") == 302

    def server_spans():
        with collector.lock:
            return [s for s in collector.spans if s.kind == "SERVER" and "reset" in s.name] or None

    spans = wait_for(server_spans, 30, "the requests' spans")
    sent = b"".join(collector.raw)
    assert token.encode() not in sent
    assert email.encode() not in sent
    assert email.split("@")[0].encode() not in sent  # nor its URL-encoded form's name part
    assert b"<token>" in sent or any("<token>" in span.name for span in spans)  # the route stays
