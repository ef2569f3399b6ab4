"""A stand-in for Sentry's ingest endpoint: a local HTTP server that keeps every envelope.

The DSN points at it (``ingest.dsn``); what it receives is what Sentry would.
Used by tests/test_sentry_integration.py (real pools) and
tests/test_sentry_scrubbing.py (this process).
"""

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Ingest(ThreadingHTTPServer):
    """Sentry's envelope endpoint, in-process: every item it receives, as (type, payload)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), IngestHandler)
        self.items: list[tuple[str, dict]] = []
        self.raw: list[bytes] = []  # every body as it arrived, for "no secret anywhere"

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server_port}/1"

    def events(self) -> list[dict]:
        return [payload for kind, payload in self.items if kind == "event"]

    def check_ins(self, slug: str) -> list[dict]:
        return [payload for kind, payload in self.items if kind == "check_in" and payload["monitor_slug"] == slug]


class IngestHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.raw.append(body)
        self.server.items.extend(parse_envelope(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format, *args):
        pass  # quiet: pytest shows the assertions


def parse_envelope(body: bytes) -> list[tuple[str, dict]]:
    """Sentry's envelope format: a header line, then per item a header line and its payload."""
    _header, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        item_header, _, rest = rest.partition(b"\n")
        item = json.loads(item_header)
        if "length" in item:
            payload, rest = rest[: item["length"]], rest[item["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item["type"], json.loads(payload) if payload.startswith(b"{") else {}))
    return items


@pytest.fixture
def ingest():
    server = Ingest()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
