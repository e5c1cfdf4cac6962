"""The HTTP face every event-driven function shares (functions-framework `@http` entry).

In:  a CloudEvent in binary or structured mode (Knative KafkaSource, our dispatcher).
Out: 200 with the output event as a binary-mode reply (Knative Broker reply) when there
is one; `application/cloudevents-batch+json` when there are several; 202 and no body
when there are none. With K_SINK set (Knative SinkBinding), outputs are POSTed there
instead and the reply is 202.
With EVENT_TOKEN or EVENT_OIDC_AUDIENCE set, `POST /` needs a bearer credential (flts.auth:
401 otherwise, naming the problem; 503 when an OIDC token cannot be checked now; the health
routes stay open), and outputs POSTed to K_SINK carry the sender's (flts.auth.sender_token).
Status codes tell the caller whether to retry: 400 = this event is bad (dead-letter it),
413 = the body is over MAX_EVENT_BYTES, 422 = the object the claim points to is missing,
5xx = something failed that may pass later (502: the output could not reach K_SINK).
The rule is flts.outcomes's, shared with infer, the embedded router and the dispatcher.
"""
from __future__ import annotations

import os
import urllib.request

import orjson
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import from_http

from flts.auth import bearer_header, gate_for, sender_token
from flts.events import MAX_EVENT_BYTES, EventError
from flts.logs import log
from flts.outcomes import SinkError, TooLarge, error_text, log_failure, status_of_exception
from flts.spec import Handler

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
HEALTH_PATHS = ("/healthz", "/readyz")


def _json(code: int, **body):
    return orjson.dumps(body), code, {"Content-Type": "application/json"}


def serve_events(request, handler: Handler, env=None):
    """Turn one HTTP request into one handler call and its reply."""
    env = os.environ if env is None else env
    if request.method == "GET" and request.path in HEALTH_PATHS:  # liveness/readiness probes
        return _json(200, status="ok")
    denied = gate_for(env).refusal(request.headers.get("Authorization"))
    if denied:  # before the body is read: an unknown sender costs nothing
        body, status, headers = _json(denied.status, error=denied.reason)
        return body, status, {**headers, "WWW-Authenticate": "Bearer"}
    try:
        event = _read_event(request)
    except (TooLarge, EventError) as exc:
        return _json(status_of_exception(exc), error=str(exc))
    sink = env.get("K_SINK")
    emitted = []
    try:
        for out in handler(event, env) or []:  # a generator handler emits as it goes
            if sink:  # e.g. a trainer's RUNNING leaves now, not when training ends
                _to_sink(sink, out, sender_token(env))
            emitted.append(out)
    except Exception as exc:  # noqa: BLE001 - flts.outcomes gives each failure the status that tells the caller
        log_failure(event, exc)
        return _json(status_of_exception(exc), error=error_text(exc))
    log("event_handled", event_type=event["type"], event_id=event["id"], emitted=[e["type"] for e in emitted])
    return ("", 202, {}) if sink else reply(emitted)


def _read_event(request):
    """The request's CloudEvent; TooLarge or EventError when there is none to handle."""
    declared = request.content_length or 0
    if declared > MAX_EVENT_BYTES:  # refuse before reading the body into memory
        raise TooLarge(f"event body of {declared} bytes is over the limit of {MAX_EVENT_BYTES}")
    body = request.get_data(cache=False)
    if len(body) > MAX_EVENT_BYTES:
        raise TooLarge(f"event body of {len(body)} bytes is over the limit of {MAX_EVENT_BYTES}")
    try:
        return from_http(dict(request.headers), body)
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types for malformed events
        raise EventError(f"not a valid CloudEvent: {exc}") from None


def _to_sink(sink: str, event, token: str) -> None:
    try:
        post_event(sink, event, token=token)
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


def post_event(url: str, event, timeout: float = 10.0, token: str | None = None) -> None:
    """POST one event in binary mode, with the bearer token when there is one."""
    headers, data = to_binary(event)
    request = urllib.request.Request(url, data=data, headers={**headers, **bearer_header(token)}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status >= 300:
            raise RuntimeError(f"sink {url} answered {response.status}")
