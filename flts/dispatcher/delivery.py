"""Delivering one event to a function: POST, retry with backoff, read its replies, or write it off.

What a status means (2xx settled, 5xx/408/409/429 retried, any other status dead-lettered)
is the shared rule of `flts.outcomes`. Retries wait `DISPATCH_BACKOFF_BASE_SEC · 2^(attempt-1)`,
capped at DISPATCH_BACKOFF_MAX_SEC; a longer Retry-After wins, capped at DISPATCH_RETRY_AFTER_MAX_SEC.
A refused connection (nothing listens: the function is down, or the supervisor is restarting it)
is retried without using up DISPATCH_MAX_RETRIES: it is not the event's fault, so it must not
make a dead letter; the event waits, uncommitted, until the function is back.

Dead letters (value, JSON): `{"event": <structured CloudEvent> | null, "error", "attempts",
"function", "timestamp", "status", "topic", "partition", "offset"}`, plus `"raw"` (the value as
text) and `"headers"` when the message could not be read as a CloudEvent.
"""
from __future__ import annotations

import email.utils
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson
from cloudevents import exceptions as ce_errors
from cloudevents.conversion import to_binary
from cloudevents.http import from_dict, from_http

from flts.auth import bearer_header, event_token
from flts.dispatcher.codec import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE, check_attributes, structured_dict
from flts.dispatcher.httpclient import PooledClient, Reply
from flts.dispatcher.settings import DispatchSettings
from flts.events import EventError
from flts.logs import warn
from flts.outcomes import Outcome, outcome_of_status


@dataclass
class DeliveryResult:
    """What came of POSTing one event: a 2xx response, or the reason it is a dead letter."""

    attempts: int
    response: httpx.Response | Reply | None = None
    status: int | None = None
    error: str | None = None
    interrupted: bool = False  # the dispatcher is stopping: settle nothing

    @property
    def ok(self) -> bool:
        return self.response is not None


def retry_after_seconds(header: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_delay(attempt: int, retry_after: float | None, settings: DispatchSettings) -> float:
    """Exponential backoff after the `attempt`-th failure; a longer Retry-After wins (capped)."""
    backoff = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
    if retry_after is None:
        return backoff
    return max(backoff, min(retry_after, settings.retry_after_max))


def deliver(client: httpx.Client | PooledClient, url: str, event, settings: DispatchSettings,
            stop: threading.Event | None = None, token: str | None = None) -> DeliveryResult:
    """POST one event (binary mode) until a 2xx, a final 4xx, or the retries run out.

    With a token (default: this process's EVENT_TOKEN) it goes along as `Authorization: Bearer`.
    """
    stop = stop or threading.Event()
    headers, body = to_binary(event)
    headers.update(bearer_header(event_token() if token is None else token))
    attempt = failures = 0
    while True:
        attempt += 1
        failures += 1
        retry_after = None
        try:
            response = client.post(url, headers=headers, content=body)
        except httpx.TransportError as exc:  # connection refused, reset, timed out: retried
            status, reason = None, f"connection error: {type(exc).__name__}: {exc}"
            if isinstance(exc, httpx.ConnectError):  # nothing listens: not counted against the event
                failures -= 1
        else:
            status = response.status_code
            outcome = outcome_of_status(status)
            if outcome is Outcome.SUCCESS:
                return DeliveryResult(attempt, response=response, status=status)
            reason = f"HTTP {status}: {response.text[:500]}"
            if outcome is Outcome.DEAD_LETTER:
                return DeliveryResult(attempt, status=status, error=reason)
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if failures > settings.max_retries:
            return DeliveryResult(attempt, status=status, error=f"gave up after {attempt} attempts: {reason}")
        delay = retry_delay(attempt, retry_after, settings)
        warn("dispatch_retry", url=url, event_id=event["id"], attempt=attempt, delay=round(delay, 3), error=reason)
        if stop.wait(delay):
            return DeliveryResult(attempt, status=status, error=reason, interrupted=True)


def reply_events(response: httpx.Response | Reply) -> list:
    """The events a function answered with: binary/structured CloudEvent, a batch, or none."""
    content_type = response.headers.get("content-type", "").lower()
    if content_type.startswith(BATCH_CONTENT_TYPE):
        return _reply_batch(response.content)
    is_binary = "ce-specversion" in response.headers
    if not is_binary and not content_type.startswith(STRUCTURED_CONTENT_TYPE):
        return []  # 202/204, or a plain "OK" from a @cloud_event function: nothing to route
    try:
        event = from_http(dict(response.headers), response.content)
    except ce_errors.GenericException as exc:
        raise EventError(f"reply is not a valid CloudEvent: {exc}") from None
    return [event]


def _reply_batch(content: bytes) -> list:
    try:
        items = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"reply batch is not JSON: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise EventError("reply batch must be a JSON list of structured CloudEvents")
    for item in items:
        check_attributes(item)
    try:
        return [from_dict(item) for item in items]
    except ce_errors.GenericException as exc:
        raise EventError(f"reply batch holds an invalid CloudEvent: {exc}") from None


def dead_letter_envelope(record, event, reason: str, attempts: int, deployment: str,
                         status: int | None = None) -> dict:
    envelope = {
        "event": structured_dict(event) if event is not None else None,
        "error": reason,
        "attempts": attempts,
        "function": deployment,
        "timestamp": datetime.now(UTC).isoformat(),
        "status": status,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if event is None:  # keep what we could not read, as faithfully as JSON allows
        envelope["raw"] = (record.value or b"").decode("utf-8", "replace")
        envelope["headers"] = {k: v.decode("utf-8", "replace") for k, v in record.headers or []}
    return envelope
