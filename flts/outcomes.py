"""The one delivery rule: which HTTP status an exception earns, and what a status tells the sender.

Every place that answers for an event or settles one reads it from here: the functions' HTTP
entry (`flts.function_http`), infer's CloudEvent route, the embedded router (it dead-letters
as "rejected" exactly what the HTTP entry answers with a 4xx) and the Kafka dispatcher (it
retries RETRY and dead-letters DEAD_LETTER).

| exception | status | outcome |
|---|---|---|
| `EventError` (incl. `DataError`), `InvalidKey`: the event is bad | 400 | dead letter |
| `TooLarge`: the body is over MAX_EVENT_BYTES | 413 | dead letter |
| `ObjectNotFound`: the object the claim points to is missing | 422 | dead letter |
| the store is out of reach for now (`flts.storage.is_transient`: refused, timed out, 5xx) | 503 | retry |
| anything else: an outage, a bug, a bad setting | 500 | retry |
| `SinkError`: the work is done, the output did not reach K_SINK | 502 | retry |

Statuses: 2xx succeed; 5xx, 408, 409 and 429 ("not now") retry; every other status dead-letters.
Kept light (no HTTP or Kafka client): infer's app imports it.
"""
from __future__ import annotations

import enum

from flts.events import EventError
from flts.logs import error
from flts.storage import InvalidKey, ObjectNotFound, is_transient

BAD_EVENT = 400
TOO_LARGE = 413
MISSING_OBJECT = 422
FAILED = 500
SINK_FAILED = 502
STORE_UNAVAILABLE = 503
RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 429})  # timeout, conflict, too many requests


class Outcome(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class TooLarge(ValueError):
    """A body over its size limit: it will not fit next time either."""


class SinkError(RuntimeError):
    """K_SINK did not take an output event (the caller redelivers; handlers are idempotent)."""


# First match wins; then a store out of reach (STORE_UNAVAILABLE); anything else is unexpected (FAILED).
_STATUS_OF_EXCEPTION: tuple[tuple[type[BaseException], int], ...] = (
    (EventError, BAD_EVENT),
    (InvalidKey, BAD_EVENT),
    (TooLarge, TOO_LARGE),
    (ObjectNotFound, MISSING_OBJECT),
    (SinkError, SINK_FAILED),
)

# The log event that names a failure; any other status is the event's own fault.
_LOG_EVENT_OF_STATUS = {FAILED: "event_failed", SINK_FAILED: "sink_failed", STORE_UNAVAILABLE: "store_unavailable"}


def retryable(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_CLIENT_ERRORS


def outcome_of_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SUCCESS
    return Outcome.RETRY if retryable(status) else Outcome.DEAD_LETTER


def status_of_exception(exc: BaseException) -> int:
    for kind, status in _STATUS_OF_EXCEPTION:
        if isinstance(exc, kind):
            return status
    return STORE_UNAVAILABLE if is_transient(exc) else FAILED


def outcome_of_exception(exc: BaseException) -> Outcome:
    return outcome_of_status(status_of_exception(exc))


def error_text(exc: BaseException) -> str:
    """The error for the caller: a known failure names its problem; an unexpected one also its type."""
    if status_of_exception(exc) in (FAILED, STORE_UNAVAILABLE):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def log_failure(event, exc: BaseException) -> None:
    """One error line for a handler's exception, named by how the sender will treat it."""
    name = _LOG_EVENT_OF_STATUS.get(status_of_exception(exc), "event_rejected")
    error(name, event_type=event["type"], event_id=event["id"], error=error_text(exc))
