"""A fake Stripe: the PaymentIntents API over real HTTP, for the real ``stripe`` client.

The network is not ours to use in tests, so this stands in for api.stripe.com.
The project's code does not know: ``StripeProvider`` is the production class,
pointed here by its base address (``STRIPE_API_BASE``); stripe-python builds the
requests, sends them through its own HTTP client and parses the answers, errors
included. What the fake does is what Stripe documents:

* ``POST /v1/payment_intents`` with ``confirm=true`` answers by payment method,
  with Stripe's test PaymentMethod ids: ``pm_card_visa`` succeeds,
  ``pm_card_chargeDeclined`` is a 402 ``card_error``,
  ``pm_card_threeDSecure2Required`` leaves the intent in ``requires_action``
  (``finish_action`` plays the customer at the bank), an unknown id is a 400
  ``invalid_request_error``. ``outcomes`` can add methods (e.g. ``processing``).
* ``Idempotency-Key``: the first answer for a key is saved and replayed for every
  repeat with the same parameters (``Idempotent-Replayed: true``); other
  parameters get a 400 ``idempotency_error``; a repeat while the first request
  still runs gets a 409 (nothing saved, retry later). Requests that fail
  validation are not saved.
* ``GET /v1/payment_intents/<id>`` and ``POST .../<id>/cancel``.
* ``GET /v1/payment_intents/search`` with a query of ``metadata['key']:'value'``
  clauses joined by ``AND``, a quote in a value escaped as ``\\'`` (Stripe's
  search query language, that much of it).
  ``forget_keys()`` plays the 24 hours after which Stripe forgets idempotency keys.
* A wrong API key is a 401. ``script(...)`` scripts the next create requests:
  an HTTP error before anything runs (429, 403, 500 ...), a dropped connection
  before or after the intent is created, a slow answer, or a hang after creating
  the intent that ends early when the client goes away (a killed worker).
* ``event(type, intent_id)`` builds a webhook event signed the way Stripe signs
  them (HMAC-SHA256 of ``"<timestamp>.<payload>"`` with the endpoint secret).
"""

import hashlib
import hmac
import json
import re
import select
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

API_KEY = "sk_test_fake"
WEBHOOK_SECRET = "whsec_fake"

# Stripe's test PaymentMethods: https://docs.stripe.com/testing
CARDS = {
    "pm_card_visa": "succeeded",
    "pm_card_mastercard": "succeeded",
    "pm_card_chargeDeclined": "declined:card_declined:generic_decline:Your card was declined.",
    "pm_card_chargeDeclinedInsufficientFunds": (
        "declined:card_declined:insufficient_funds:Your card has insufficient funds."
    ),
    "pm_card_threeDSecure2Required": "requires_action",
}


def error_body(error_type: str, message: str, **fields) -> dict:
    return {"error": {"type": error_type, "message": message, **fields}}


class FakeStripe:
    def __init__(self):
        self.intents: dict[str, dict] = {}
        self.saved: dict[str, tuple[dict, int, dict]] = {}  # idempotency key -> (params, status, body)
        self.in_flight: set[str] = set()
        self.outcomes = dict(CARDS)
        self.faults: deque[tuple] = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeStripe":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------
    # What tests script and inspect.
    # ------------------------------------------------------------------
    def script(self, *faults: tuple) -> None:
        """Faults for the next create requests, one each, in order:

        ``("http", 429, "rate_limit_error", "message")``  answer this, run nothing
        ``("drop",)``                 close the connection, run nothing
        ``("drop_after_create",)``    create the intent (answer saved), then close the connection
        ``("slow", seconds)``         wait, then run
        ``("hang_after_create", seconds)``  create, then wait (until the client leaves), then answer
        """
        self.faults.extend(faults)

    def creates(self) -> int:
        """How many PaymentIntents exist: the number of charges the customer would see."""
        return len(self.intents)

    def finish_action(self, intent_id: str, *, succeed: bool = True) -> dict:
        """The customer at the bank's 3-D Secure page: passes, or fails."""
        with self.lock:
            intent = self.intents[intent_id]
            intent["next_action"] = None
            if succeed:
                intent["status"] = "succeeded"
            else:
                intent["status"] = "requires_payment_method"
                intent["last_payment_error"] = {
                    "type": "card_error",
                    "code": "payment_intent_authentication_failure",
                    "message": "We are unable to authenticate your payment method.",
                }
            return dict(intent)

    def forget_keys(self) -> None:
        """A day later: Stripe no longer knows the idempotency keys, a repeat creates a new intent."""
        with self.lock:
            self.saved.clear()

    def set_status(self, intent_id: str, status: str) -> None:
        with self.lock:
            self.intents[intent_id]["status"] = status

    def event(self, event_type: str, intent_id: str, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None):
        """A webhook delivery: (body, Stripe-Signature header)."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        event = {
            "id": f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2025-01-27.acacia",
            "created": timestamp,
            "type": event_type,
            "livemode": False,
            "pending_webhooks": 1,
            "data": {"object": dict(self.intents[intent_id])},
        }
        body = json.dumps(event).encode()
        return body, sign(body, secret, timestamp)

    # ------------------------------------------------------------------
    # The API.
    # ------------------------------------------------------------------
    def _create(self, params: dict) -> tuple[int, dict]:
        amount = params.get("amount", "")
        if not amount.isdigit() or int(amount) < 50:
            return 400, error_body("invalid_request_error", "Invalid amount.", param="amount")
        payment_method = params.get("payment_method", "")
        outcome = self.outcomes.get(payment_method)
        if outcome is None:
            message = f"No such PaymentMethod: '{payment_method}'"
            return 400, error_body("invalid_request_error", message, code="resource_missing", param="payment_method")
        intent_id = f"pi_{uuid.uuid4().hex[:24]}"
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(amount),
            "currency": params.get("currency", ""),
            "status": outcome,
            "payment_method": payment_method,
            "client_secret": f"{intent_id}_secret_{uuid.uuid4().hex[:12]}",
            "metadata": {key[9:-1]: value for key, value in params.items() if key.startswith("metadata[")},
            "next_action": None,
            "last_payment_error": None,
            "cancellation_reason": None,
            "created": int(time.time()),
            "livemode": False,
        }
        if outcome == "requires_action":
            if params.get("return_url"):
                redirect = {"url": f"{self.url}/3ds/{intent_id}", "return_url": params["return_url"]}
                intent["next_action"] = {"type": "redirect_to_url", "redirect_to_url": redirect}
            else:
                intent["next_action"] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
        status, body = 200, intent
        if outcome.startswith("declined:"):
            _, code, decline_code, message = outcome.split(":", 3)
            error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message}
            intent |= {"status": "requires_payment_method", "last_payment_error": error}
            status, body = 402, {"error": error | {"payment_intent": dict(intent)}}
        with self.lock:
            self.intents[intent_id] = intent
        return status, json.loads(json.dumps(body))

    def _retrieve(self, intent_id: str) -> tuple[int, dict]:
        with self.lock:
            intent = self.intents.get(intent_id)
            if intent is None:
                message = f"No such payment_intent: '{intent_id}'"
                return 404, error_body("invalid_request_error", message, code="resource_missing")
            return 200, dict(intent)

    def _search(self, query: str) -> tuple[int, dict]:
        wanted = []
        for clause in query.split(" AND "):
            match = re.fullmatch(r"metadata\['([^']+)'\]:'((?:[^'\\]|\\')*)'", clause.strip())
            if match is None:
                return 400, error_body("invalid_request_error", f"Invalid search query: {query}")
            wanted.append((match[1], match[2].replace("\\'", "'")))
        with self.lock:
            found = [
                dict(intent)
                for intent in self.intents.values()
                if all(intent["metadata"].get(key) == value for key, value in wanted)
            ]
        found.sort(key=lambda intent: intent["created"], reverse=True)
        body = {"object": "search_result", "url": "/v1/payment_intents/search", "has_more": False, "data": found}
        return 200, body | {"next_page": None}

    def _cancel(self, intent_id: str, params: dict) -> tuple[int, dict]:
        with self.lock:
            intent = self.intents.get(intent_id)
            if intent is None:
                return 404, error_body("invalid_request_error", f"No such payment_intent: '{intent_id}'")
            if intent["status"] in ("succeeded", "canceled", "processing"):
                message = f"You cannot cancel this PaymentIntent because it has a status of {intent['status']}."
                return 400, error_body("invalid_request_error", message, code="payment_intent_unexpected_state")
            intent |= {"status": "canceled", "next_action": None}
            intent["cancellation_reason"] = params.get("cancellation_reason") or None
            return 200, dict(intent)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                params = dict(parse_qsl(self.rfile.read(length).decode())) if length else {}
                key = self.headers.get("Idempotency-Key", "")
                with fake.lock:
                    fake.requests.append({"method": method, "path": self.path, "params": params, "key": key})
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    return self._answer(401, error_body("invalid_request_error", "Invalid API Key provided."))
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/")
                if method == "POST" and parts == ["v1", "payment_intents"]:
                    return self._create(params, key)
                if method == "GET" and parts == ["v1", "payment_intents", "search"]:
                    return self._answer(*fake._search(dict(parse_qsl(query)).get("query", "")))
                if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "payment_intents"]:
                    return self._answer(*fake._retrieve(parts[2]))
                if method == "POST" and len(parts) == 4 and parts[3] == "cancel":
                    return self._answer(*fake._cancel(parts[2], params))
                return self._answer(404, error_body("invalid_request_error", f"Unrecognized request URL: {self.path}"))

            def _create(self, params: dict, key: str) -> None:
                with fake.lock:
                    if key and key in fake.saved:
                        saved_params, status, body = fake.saved[key]
                        if saved_params != params:
                            message = (
                                "Keys for idempotent requests can only be used with the same parameters "
                                "they were first used with."
                            )
                            return self._answer(400, error_body("idempotency_error", message))
                        return self._answer(status, body, replayed=True)
                    if key in fake.in_flight:
                        message = "There is currently another in-progress request using this Idempotent Key."
                        body = error_body("invalid_request_error", message, code="idempotency_key_in_use")
                        return self._answer(409, body)
                    if key:
                        fake.in_flight.add(key)
                    fault = fake.faults.popleft() if fake.faults else ("none",)
                try:
                    kind = fault[0]
                    if kind == "http":  # refused at the door: nothing ran, nothing saved
                        return self._answer(fault[1], error_body(fault[2], fault[3]))
                    if kind == "drop":
                        return self._drop()
                    if kind == "slow":
                        time.sleep(fault[1])
                    status, body = fake._create(params)
                    if key and status < 500 and not (status == 400 and body["error"]["type"] != "card_error"):
                        with fake.lock:  # saved once the endpoint ran; validation errors are not
                            fake.saved[key] = (params, status, body)
                    if kind == "drop_after_create":
                        return self._drop()
                    if kind == "hang_after_create":
                        self._wait_or_client_gone(fault[1])
                    return self._answer(status, body)
                finally:
                    with fake.lock:
                        fake.in_flight.discard(key)

            def _wait_or_client_gone(self, seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], 0.1)
                    if readable and not self.connection.recv(1, socket.MSG_PEEK):
                        return  # the client closed its end (a killed worker's socket)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def _answer(self, status: int, body: dict, replayed: bool = False) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
                if replayed:
                    self.send_header("Idempotent-Replayed", "true")
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe sends with a webhook."""
    signed = f"{timestamp}.".encode() + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"
