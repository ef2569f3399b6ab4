"""/metrics and /readyz against real processes and real outages.

The histogram is filled by real runs on the worker pools; the heartbeats come
from the pools' own timers (beat's tick is in test_beat_integration.py). Redis,
the broker and the database are taken down the way a scrape meets them in an
incident: their address stops answering (a closed port), with the real clients
and their real timeouts. Whatever happens, a scrape answers 200 and says which
source it could not read, and /readyz answers 200 or 503, never 500.
"""

import base64
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.db import connection, connections
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.project_slug }}.core import metrics, redis_client
from {{ cookiecutter.project_slug }}.core.tasks import probe_queue_latency
from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import generate_csv_export

from .conftest import free_port, wait_for

pytestmark = pytest.mark.integration
CREDENTIALS = b"prometheus:secret"
AUTH = "Basic " + base64.b64encode(CREDENTIALS).decode()
PROBE = probe_queue_latency.name
EXPORT = generate_csv_export.name


def within(seconds: float, request):
    """``request()``, run on a thread of its own: it must return within ``seconds``, never hang the test."""
    outcome = {}

    def run():
        try:
            outcome["response"] = request()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc
        finally:
            connections.close_all()  # this thread's database connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no answer within {seconds} s: a dependency that is down must not hang it"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def scrape(client, slow: float = 3) -> dict[tuple[str, tuple], float]:
    """A /metrics scrape as {(sample name, sorted labels): value}; it must answer 200, and quickly."""
    response = within(slow, lambda: client.get("/metrics", HTTP_AUTHORIZATION=AUTH))
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def sources_up(samples) -> dict[str, float]:
    up = {labels: value for (name, labels), value in samples.items() if name == "celery_metrics_source_up"}
    return {dict(labels)["source"]: value for labels, value in up.items()}


def histogram(samples, task: str, queue: str) -> dict[str, float]:
    """One task's duration histogram: {"0.01": ..., "+Inf": ..., "sum": ..., "count": ...}."""
    found = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name.startswith("celery_task_duration_seconds") and (labels["task"], labels["queue"]) == (task, queue):
            found[labels.get("le") or name.rsplit("_", 1)[1]] = value
    return found


@pytest.fixture
def metrics_auth(settings):
    settings.METRICS_BASIC_AUTH = CREDENTIALS.decode()


# --- the series, from real processes ---------------------------------------


def test_the_duration_histogram_buckets_real_runs(live_celery, client, metrics_auth):
    # A probe returns in milliseconds; the export sleeps EXPORT_THROTTLE_SECONDS (0.2 s on
    # the test pools) before each 500-row batch: 1,200 rows are 3 batches, at least 0.6 s.
    call_command("seed_demo_data", transactions=1_200, orders=0)
    before = scrape(client)
    probes_before, exports_before = histogram(before, PROBE, "high"), histogram(before, EXPORT, "export")

    for _ in range(3):
        probe_queue_latency.apply_async(("high", time.time()), queue="high", ignore_result=True)
    job = ExportJob.objects.create(user=get_user_model().objects.get(username="demo"))
    generate_csv_export.delay(job.pk)

    def ran(task, queue, runs, was):
        return (now := histogram(scrape(client), task, queue)).get("count", 0) - was.get("count", 0) >= runs and now

    probes = wait_for(lambda: ran(PROBE, "high", 3, probes_before), 30, "three probes in the histogram")
    exports = wait_for(lambda: ran(EXPORT, "export", 1, exports_before), 60, "the export in the histogram")

    def grew(now, was, key):
        return now[key] - was.get(key, 0)

    assert grew(probes, probes_before, "count") == 3
    assert grew(probes, probes_before, "1.0") == 3  # every probe under a second
    assert grew(probes, probes_before, "+Inf") == 3
    assert grew(exports, exports_before, "count") == 1
    assert grew(exports, exports_before, "0.5") == 0  # at least 0.6 s of throttle
    assert grew(exports, exports_before, "60.0") == 1
    assert grew(exports, exports_before, "sum") >= 0.6
    bounds = [float(le) for le in exports if le not in ("sum", "count")]
    assert bounds == sorted(bounds)
    assert len(bounds) == len(metrics.DURATION_BUCKETS) + 1
    counts = [exports[le] for le in exports if le not in ("sum", "count")]
    assert counts == sorted(counts), "buckets are cumulative"


def test_every_pool_stamps_its_heartbeat_from_its_timer(worker_pools, client, metrics_auth):
    from config.healthcheck import HEARTBEAT_INTERVAL

    def heartbeats():
        beats = {
            dict(labels)["pool"]: value
            for (name, labels), value in scrape(client).items()
            if name == "celery_worker_pool_heartbeat_timestamp_seconds"
        }
        return beats if set(beats) >= set(worker_pools.processes) else None

    first = wait_for(heartbeats, 30, "a heartbeat from every pool")
    assert all(time.time() - at < 5 * HEARTBEAT_INTERVAL for at in first.values()), first
    # And again on the timer, not only at start.
    wait_for(lambda: all(at > first[pool] for pool, at in heartbeats().items()), 3 * HEARTBEAT_INTERVAL, "new beats")


# --- outages -------------------------------------------------------------------


@pytest.fixture
def redis_down(settings, monkeypatch):
    """The metrics' Redis stops answering (the broker, configured apart, still does)."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(redis_client, "_clients", {})  # clients for the new address


@pytest.fixture
def broker_down(broker_url, monkeypatch):
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setitem(probe_queue_latency.app.conf, "broker_url", url)
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the variable before its config


@pytest.fixture
def database_down(transactional_db):
    """The web process' database connection points at a port where nothing listens."""
    connection.close()
    real_port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = free_port()
    yield
    connection.close()
    connection.settings_dict["PORT"] = real_port


@pytest.fixture
def stuck_port():
    """A server that accepts connections and never answers (a Redis stuck in a long command, or swapping)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes the handshakes; nobody ever reads
        yield server.getsockname()[1]


def test_a_scrape_with_redis_stuck_answers_within_its_timeout(
    broker_url, transactional_db, stuck_port, settings, monkeypatch, client, metrics_auth
):
    settings.REDIS_URL = f"redis://127.0.0.1:{stuck_port}/0"
    monkeypatch.setattr(redis_client, "_clients", {})

    assert sources_up(scrape(client)) == {"redis": 0, "broker": 1, "database": 1}


def test_a_scrape_and_readiness_with_the_broker_stuck_answer_within_their_timeout(
    transactional_db, stuck_port, monkeypatch, client, metrics_auth
):
    url = f"redis://127.0.0.1:{stuck_port}/0"
    monkeypatch.setitem(probe_queue_latency.app.conf, "broker_url", url)
    monkeypatch.setenv("CELERY_BROKER_URL", url)

    assert sources_up(scrape(client)) == {"redis": 1, "broker": 0, "database": 1}
    response = within(3, lambda: client.get("/readyz"))
    assert (response.status_code, response.json()) == (503, {"database": "ok", "broker": "unavailable"})


def test_a_scrape_without_redis_still_says_what_the_broker_and_database_know(
    broker_url, transactional_db, redis_down, client, metrics_auth
):
    samples = scrape(client)

    assert sources_up(samples) == {"redis": 0, "broker": 1, "database": 1}
    assert ("celery_queue_length", (("queue_name", "high"),)) in samples
    assert ("celery_queue_sla_seconds", (("queue", "high"),)) in samples
    assert not any(name.startswith("celery_task_") for name, _ in samples)
    assert client.get("/readyz").status_code == 200  # the metrics' Redis is no dependency of readiness


def test_a_scrape_without_the_broker_answers_200(transactional_db, broker_down, client, metrics_auth):
    samples = scrape(client)

    assert sources_up(samples) == {"redis": 1, "broker": 0, "database": 1}
    assert not any(name == "celery_queue_length" for name, _ in samples)
    response = within(3, lambda: client.get("/readyz"))
    assert (response.status_code, response.json()) == (503, {"database": "ok", "broker": "unavailable"})


def test_a_scrape_without_the_database_answers_200(broker_url, database_down, client, metrics_auth):
    samples = scrape(client)

    assert sources_up(samples) == {"redis": 1, "broker": 1, "database": 0}
    assert not any(name == "celery_dead_letters" for name, _ in samples)
    response = within(3, lambda: client.get("/readyz"))
    assert (response.status_code, response.json()) == (503, {"database": "unavailable", "broker": "ok"})


def test_a_scrape_with_everything_down_still_answers_200(redis_down, broker_down, database_down, client, metrics_auth):
    samples = scrape(client)

    assert sources_up(samples) == {"redis": 0, "broker": 0, "database": 0}
    assert {name for name, _ in samples} == {"celery_queue_sla_seconds", "celery_metrics_source_up"}
    response = within(3, lambda: client.get("/readyz"))
    assert (response.status_code, response.json()) == (503, {"database": "unavailable", "broker": "unavailable"})


# --- hostile requests, over a real socket -----------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def web(transactional_db, broker_url, metrics_auth):
    """Django's WSGI handler on a real socket: headers arrive as bytes and are decoded as WSGI says (latin-1)."""
    handler = WSGIHandler()

    def application(environ, start_response):
        try:
            return handler(environ, start_response)
        finally:
            connections.close_all()  # this thread's connection: not left open for the test database's teardown

    server = make_server("127.0.0.1", 0, application, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def raw_get(port: int, path: bytes, headers: bytes = b"") -> int:
    """Send exactly these bytes; the response's status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: localhost\r\n" + headers + b"\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


HOSTILE_HEADERS = {
    "non-ASCII bytes": b"Authorization: Basic \xff\xfe\xe9\r\n",
    "latin-1 credentials": b"Authorization: Basic " + base64.b64encode(b"prometheus:s\xe9cret") + b"\r\n",
    "non-UTF-8 after base64": b"Authorization: Basic " + base64.b64encode(b"\xff:\x80") + b"\r\n",
    "UTF-8 credentials": b"Authorization: Basic " + base64.b64encode("prom\u00e9th\u00e9e:\u20ac".encode()) + b"\r\n",
    "garbage base64": b"Authorization: Basic %%%***\r\n",
    "no colon": b"Authorization: Basic " + base64.b64encode(b"prometheussecret") + b"\r\n",
    "UTF-8 scheme": "Authorization: Básic x\r\n".encode(),
}


@pytest.mark.parametrize("header", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS)
def test_hostile_authorization_bytes_get_401_on_the_wire(web, header):
    assert raw_get(web, b"/metrics", header) == 401
    assert raw_get(web, b"/readyz", header) == 200


def test_the_right_credentials_on_the_wire_get_the_scrape(web):
    assert raw_get(web, b"/metrics", f"Authorization: {AUTH}\r\n".encode()) == 200


@pytest.mark.parametrize("path", [b"/readyz?\xff\xfe=\x00", b"/readyz?probe=%ff%fe", b"/readyz?" + b"a=%00&" * 500])
def test_readiness_never_answers_500_to_strange_requests(web, path):
    assert raw_get(web, path, b"Cookie: \xff\xfe\r\nX-Forwarded-Host: \xe9\r\n") == 200
