"""The HTTP face every event-driven function shares (functions-framework `@http` entry).

In:  a CloudEvent in binary or structured mode (Knative KafkaSource, our dispatcher).
Out: 200 with the output event as a binary-mode reply (Knative Broker reply) when there
is one; `application/cloudevents-batch+json` when there are several; 202 and no body
when there are none. With K_SINK set (Knative SinkBinding), outputs are POSTed there
instead and the reply is 202.
Status codes tell the caller whether to retry: 400 = this event is bad (dead-letter it),
413 = the body is over MAX_EVENT_BYTES, 422 = the object the claim points to is missing,
5xx = something failed that may pass later (502: the output could not reach K_SINK).
"""
from __future__ import annotations

import os
import urllib.request

import orjson
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import from_http

from flts.embedded import Handler
from flts.events import MAX_EVENT_BYTES, EventError
from flts.logs import error, log
from flts.storage import InvalidKey, ObjectNotFound

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
HEALTH_PATHS = ("/healthz", "/readyz")


def _json(code: int, **body):
    return orjson.dumps(body), code, {"Content-Type": "application/json"}


def serve_events(request, handler: Handler, env=None):
    """Turn one HTTP request into one handler call and its reply."""
    env = os.environ if env is None else env
    if request.method == "GET" and request.path in HEALTH_PATHS:  # liveness/readiness probes
        return _json(200, status="ok")
    declared = request.content_length or 0
    if declared > MAX_EVENT_BYTES:  # refuse before reading the body into memory
        return _json(413, error=f"event body of {declared} bytes is over the limit of {MAX_EVENT_BYTES}")
    body = request.get_data(cache=False)
    if len(body) > MAX_EVENT_BYTES:
        return _json(413, error=f"event body of {len(body)} bytes is over the limit of {MAX_EVENT_BYTES}")
    try:
        event = from_http(dict(request.headers), body)
    except Exception as exc:  # the SDK raises several types for malformed events
        return _json(400, error=f"not a valid CloudEvent: {exc}")
    sink = env.get("K_SINK")
    emitted = []
    try:
        for out in handler(event, env) or []:  # a generator handler emits as it goes
            if sink:  # e.g. a trainer's RUNNING leaves now, not when training ends
                _to_sink(sink, out)
            emitted.append(out)
    except SinkError as exc:  # 502 so the caller redelivers (handlers are idempotent)
        error("sink_failed", event_type=event["type"], event_id=event["id"], error=str(exc))
        return _json(502, error=str(exc))
    except (EventError, InvalidKey) as exc:
        error("event_rejected", event_type=event["type"], event_id=event["id"], error=str(exc))
        return _json(400, error=str(exc))
    except ObjectNotFound as exc:
        error("event_rejected", event_type=event["type"], event_id=event["id"], error=str(exc))
        return _json(422, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - retryable by the caller
        error("event_failed", event_type=event["type"], event_id=event["id"], error=f"{type(exc).__name__}: {exc}")
        return _json(500, error=f"{type(exc).__name__}: {exc}")
    log("event_handled", event_type=event["type"], event_id=event["id"], emitted=[e["type"] for e in emitted])
    return ("", 202, {}) if sink else reply(emitted)


class SinkError(RuntimeError):
    """K_SINK did not take an output event."""


def _to_sink(sink: str, event) -> None:
    try:
        post_event(sink, event)
    except Exception as exc:  # noqa: BLE001 - any failure means the output is not delivered
        raise SinkError(f"cannot deliver the output to K_SINK: {type(exc).__name__}: {exc}") from exc


def reply(emitted: list):
    """The outputs as the HTTP answer (Knative Broker reply; our dispatcher reads it too)."""
    if not emitted:
        return "", 202, {}
    if len(emitted) == 1:
        headers, data = to_binary(emitted[0])
        return data, 200, headers
    batch = [orjson.loads(to_structured(e)[1]) for e in emitted]
    return orjson.dumps(batch), 200, {"Content-Type": BATCH_CONTENT_TYPE}


def post_event(url: str, event, timeout: float = 10.0) -> None:
    headers, data = to_binary(event)
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status >= 300:
            raise RuntimeError(f"sink {url} answered {response.status}")
