"""What a prediction request passes before its route runs: the API key, the body, admission.

    POST /predict, POST /v2/models/{name}/infer
      → PREDICT_API_KEY (when set; 401)
      → the whole body within BODY_READ_SECONDS (408) and MAX_BODY_BYTES (413)
      → an admission slot (MAX_INFLIGHT; 429 + Retry-After at once)
      → the route (InferService.predict / v2_infer), called with the body, its answer sent here

The slot is taken only once the body is complete (issue 12, M1): a client that sends its
headers and then trickles bytes holds a connection, never a slot, so slow clients cannot
starve predictions; after BODY_READ_SECONDS it gets 408 and its connection is closed.

The prediction routes are answered here, before any of Starlette's layers (InferApp in
flts.infer.app calls this first): no error middleware, no route matching, no Request or
Response object, the answer sent as two ASGI messages. Every layer on this path
costs throughput that a model running in microseconds would notice (issue 13).
"""
from __future__ import annotations

import asyncio
import time

import orjson

from flts.auth import refusal
from flts.infer.features import RequestError
from flts.infer.v2 import BINARY_HEADER

JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its body arrived: nobody to answer."""


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(scope, receive, limit: int, setting: str, deadline: float) -> bytes:
    """The whole body: 413 past `limit` (from Content-Length before reading, else while
    streaming), 408 when it has not arrived within `deadline` seconds. One coroutine, the loop
    inline: every prediction request reads its body."""
    _check_declared_length(scope, limit, setting)
    late = _Deadline(asyncio.current_task())
    timer = asyncio.get_running_loop().call_later(deadline, late.expire)
    chunks, size = [], 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(f"the body is over the limit of {limit} bytes ({setting})", 413)
            if not message.get("more_body", False):
                return b"".join(chunks) + chunk if chunks else chunk
            chunks.append(chunk)
    except asyncio.CancelledError:
        if late.expired and late.task.uncancel() <= late.cancelling:  # our timer, not a shutdown
            raise RequestError(f"the request body did not arrive within {deadline:g} s (BODY_READ_SECONDS)", 408) from None
        raise
    finally:
        timer.cancel()


def _check_declared_length(scope, limit: int, setting: str) -> None:
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(f"invalid Content-Length {declared[:20]!r}")
        if int(declared) > limit:
            raise RequestError(f"the body of {declared} bytes is over the limit of {limit} bytes ({setting})", 413)


class _Deadline:
    """What asyncio.timeout does, with one timer and no context manager: it costs every
    prediction request a few µs, a share a model running in microseconds notices (issue 13)."""

    __slots__ = ("task", "cancelling", "expired")

    def __init__(self, task: asyncio.Task):
        self.task, self.cancelling, self.expired = task, task.cancelling(), False

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()


def error_headers(status: int) -> dict[str, str]:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    # After a 408 or 413 the rest of the body may still be on its way: close the connection.
    return {"Connection": "close"} if status in (408, 413) else {}


async def send_json(send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Send an answer: JSON unless `headers` names another Content-Type."""
    raw_headers = [(b"content-length", str(len(body)).encode())]
    if headers:
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if not headers or "Content-Type" not in headers:
        raw_headers.append((b"content-type", JSON))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


_V2_PREFIX, _V2_SUFFIX = "/v2/models/", "/infer"


def admitted_route(scope) -> tuple[str, str | None] | None:
    """(metrics name, v2 model name) of a prediction route, else None (the router's business)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    if path == "/predict":
        return "predict", None
    if path.startswith(_V2_PREFIX) and path.endswith(_V2_SUFFIX):
        name = path[len(_V2_PREFIX):-len(_V2_SUFFIX)]
        if name and "/" not in name:
            return "v2_infer", name
    return None


class AdmissionControl:
    """Pure ASGI middleware that answers the prediction routes itself (see the module docstring)
    and hands every other request to the Starlette app. An admitted request is released once
    its answer is sent; the route counts it in the metrics."""

    def __init__(self, app, service):
        self.app, self.service = app, service
        settings = service.settings
        self.api_key = settings.predict_api_key
        self.limit, self.deadline = settings.max_body_bytes, settings.body_read_seconds
        self.busy_body = orjson.dumps({"status": "ERROR", "error": f"over the concurrency limit of "
                                       f"{settings.max_inflight} (MAX_INFLIGHT); retry after "
                                       f"{settings.retry_after_seconds} s"})
        self.busy_headers = {"Retry-After": str(settings.retry_after_seconds)}

    async def __call__(self, scope, receive, send):
        admitted = admitted_route(scope)
        if admitted is None:
            await self.app(scope, receive, send)
            return
        route, name = admitted
        started = time.perf_counter()
        try:
            self._check_key(scope)
            body = await read_body(scope, receive, self.limit, "MAX_BODY_BYTES", self.deadline)
        except RequestError as exc:
            await send_json(send, exc.status, orjson.dumps({"status": "ERROR", "error": str(exc)}),
                            error_headers(exc.status))
            self.service._count(route, exc.status, started)
            return
        except ClientGone:
            return
        batcher = self.service.batcher
        if not batcher.try_admit():
            await send_json(send, 429, self.busy_body, self.busy_headers)
            self.service._count(route, 429, started)
            return
        try:
            if name is None:
                answer = await self.service.predict(body)
            else:
                answer = await self.service.v2_infer(name, body, header(scope, BINARY_HEADER))
            await send_json(send, *answer)
        finally:
            batcher.release()

    def _check_key(self, scope) -> None:
        if self.api_key:  # the only per-request work auth adds: one header compare
            reason = refusal(header(scope, b"authorization"), self.api_key)
            if reason:
                raise RequestError(f"{reason} (PREDICT_API_KEY)", 401)
