"""The ingress (what functions use as K_SINK): POST a CloudEvent (binary, structured or batch)
and it is written to the topic of its type before the 202 goes back.

`POST /from/<deployment>` is the same, from that deployment (its K_SINK on the local stack):
taken only while a delivery to it is in flight, 409 otherwise (`Dispatcher.ingest`).

Also `GET /healthz` (per-consumer counters) and `GET /readyz` (200 once every consumer has its
partitions). 503 + Retry-After when Kafka cannot take the events: the sender retries.
With EVENT_TOKEN set, a POST needs `Authorization: Bearer <token>` (401 otherwise).
"""
from __future__ import annotations

from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import orjson
from cloudevents import exceptions as ce_errors
from cloudevents.http import from_dict, from_http

from flts.auth import event_token, refusal
from flts.dispatcher.codec import BATCH_CONTENT_TYPE, check_attributes
from flts.events import MAX_EVENT_BYTES, EventError
from flts.logs import error
from flts.outcomes import BAD_EVENT, TOO_LARGE

MAX_BODY_BYTES = 4 * MAX_EVENT_BYTES  # a batch holds several events
UNAVAILABLE = 503  # Kafka cannot take the events, or the consumers are not ready: come back later
NOT_IN_FLIGHT = 409
SENDER_PREFIX = "/from/"


class NotInFlight(Exception):
    """A deployment posted an output while no delivery to it is in flight."""


class IngressBackend(Protocol):
    """What the ingress answers from (the Dispatcher)."""

    def health(self) -> dict: ...

    def ready(self) -> bool: ...

    def ingest(self, headers: Mapping[str, str], body: bytes, sender: str | None = None) -> list[dict]: ...


def events_from_request(headers: Mapping[str, str], body: bytes) -> list:
    """A POSTed CloudEvent (binary or structured) or batch; EventError names the problem."""
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "").lower()
    try:
        if not content_type.startswith(BATCH_CONTENT_TYPE):
            found = [from_http(dict(headers), body)]
        else:
            found = [from_dict(item) for item in _batch_items(body)]
    except ce_errors.GenericException as exc:
        raise EventError(f"not a valid CloudEvent: {exc}") from None
    for event in found:
        check_attributes(event.get_attributes())
    return found


def _batch_items(body: bytes) -> list[dict]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"batch is not JSON: {exc}") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise EventError("a batch must be a non-empty JSON list of structured CloudEvents")
    return items


class _IngressHandler(BaseHTTPRequestHandler):
    server: IngressServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        backend = self.server.backend
        if self.path in ("/healthz", "/health"):
            self._reply(200, {"status": "ok", **backend.health()})
        elif self.path == "/readyz":
            ready = backend.ready()
            self._reply(200 if ready else UNAVAILABLE, {"ready": ready, **backend.health()})
        else:
            self._reply(404, {"error": f"no route {self.path}; POST a CloudEvent to /"})

    def do_POST(self) -> None:  # noqa: N802
        denied = refusal(self.headers.get("Authorization"), self.server.token)
        if denied:  # the body stays unread: close the connection rather than parse past it
            self.close_connection = True
            return self._reply(401, {"error": denied})
        path = self.path.split("?", 1)[0]
        if path != "/" and not path.startswith(SENDER_PREFIX):
            self.close_connection = True  # the body stays unread
            return self._reply(404, {"error": f"no route {path}; POST a CloudEvent to / or /from/<deployment>"})
        sender = path.removeprefix(SENDER_PREFIX).strip("/") or None if path != "/" else None
        length = self.headers.get("content-length")
        if length is None or not length.isdigit():
            return self._reply(411, {"error": "Content-Length is required"})
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            return self._reply(TOO_LARGE, {"error": f"body of {length} bytes is over the limit of {MAX_BODY_BYTES}"})
        body = self.rfile.read(int(length))
        try:
            accepted = self.server.backend.ingest(dict(self.headers.items()), body, sender)
        except EventError as exc:
            return self._reply(BAD_EVENT, {"error": str(exc)})
        except NotInFlight as exc:
            return self._reply(NOT_IN_FLIGHT, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - Kafka unavailable: the sender should retry
            error("ingress_failed", error=f"{type(exc).__name__}: {exc}")
            return self._reply(UNAVAILABLE, {"error": f"could not write to Kafka: {type(exc).__name__}: {exc}"})
        self._reply(202, {"accepted": accepted})

    def _reply(self, status: int, body: dict) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == UNAVAILABLE:
            self.send_header("Retry-After", "1")
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the per-request stderr line
        pass


class IngressServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, backend: IngressBackend, token: str | None = None):
        self.backend = backend
        self.token = event_token() if token is None else token  # EVENT_TOKEN of this process by default
        super().__init__(address, _IngressHandler)
