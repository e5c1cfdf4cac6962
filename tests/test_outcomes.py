"""The shared delivery rule (flts.outcomes), and that every place answering for an event agrees on it:
the functions' HTTP entry, infer's CloudEvent route, the embedded router and the Kafka dispatcher.
"""
from __future__ import annotations

import flask
import httpx
import pytest
import urllib3.exceptions
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from flts import events, routing
from flts.dispatcher.delivery import deliver
from flts.dispatcher.settings import DispatchSettings
from flts.embedded import EmbeddedRouter
from flts.events import EventError
from flts.function_http import serve_events
from flts.outcomes import (
    Outcome,
    SinkError,
    TooLarge,
    error_text,
    outcome_of_exception,
    outcome_of_status,
    retryable,
    status_of_exception,
)
from flts.storage import FileStore, InvalidKey, ObjectNotFound


class ContractBroken(EventError):
    """A subclass (like preprocess's DataError) is still the event's fault."""


# Each exception class a handler may raise, and the status the rule gives it.
EXCEPTIONS = [
    (EventError("field 'bucket' is missing"), 400),
    (ContractBroken("timestamps are not sorted"), 400),
    (InvalidKey("unsafe object key '../x'"), 400),
    (TooLarge("event body of 300000 bytes is over the limit"), 413),
    (ObjectNotFound("raw-data", "site/site.csv"), 422),
    (RuntimeError("disk on fire"), 500),
    (KeyError("not an ObjectNotFound"), 500),
    (OSError("the disk is full"), 500),
    (SinkError("cannot deliver the output to K_SINK"), 502),
    # the S3 server is down: minio's urllib3 gave up (flts.storage.is_transient says which failures)
    (urllib3.exceptions.MaxRetryError(None, "/raw-data/site/site.csv",
                                      urllib3.exceptions.NewConnectionError(None, "Connection refused")), 503),
]
IDS = [type(exc).__name__ for exc, _ in EXCEPTIONS]


def ready_event():
    return events.make_event(events.DATASET_READY, "test",
                             {"bucket": "raw-data", "object_key": "site/site.csv", "identifier": "site"})


def raising(exc: BaseException):
    """A handler (or infer's apply_event) that fails with `exc`."""
    def handler(*args):
        raise exc
    return handler


# ---------------------------------------------------------------- the rule

@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_success(status):
    assert outcome_of_status(status) is Outcome.SUCCESS


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409, 429])
def test_5xx_and_not_now_4xx_are_retried(status):
    assert outcome_of_status(status) is Outcome.RETRY and retryable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 411, 413, 422, 301])
def test_every_other_status_is_dead_lettered(status):
    assert outcome_of_status(status) is Outcome.DEAD_LETTER and not retryable(status)


@pytest.mark.parametrize("exc, status", EXCEPTIONS, ids=IDS)
def test_each_exception_class_has_its_documented_status(exc, status):
    assert status_of_exception(exc) == status
    assert outcome_of_exception(exc) is outcome_of_status(status)


def test_error_text_names_the_type_only_of_unexpected_failures():
    assert error_text(EventError("field 'bucket' is missing")) == "field 'bucket' is missing"
    assert error_text(SinkError("K_SINK said no")) == "K_SINK said no"
    assert error_text(OSError("the disk is full")) == "OSError: the disk is full"


# ---------------------------------------------------------------- everyone agrees

def http_entry_status(exc: BaseException) -> tuple[int, dict]:
    """What the functions' HTTP entry answers when the handler raises `exc`."""
    app = flask.Flask("test")
    app.add_url_rule("/", "event", lambda: serve_events(flask.request, raising(exc), env={}), methods=["POST"])
    headers, body = to_binary(ready_event())
    response = app.test_client().post("/", data=body, headers=headers)
    return response.status_code, response.get_json()


def embedded_error(exc: BaseException, monkeypatch) -> str:
    """The dead letter the embedded router records when the handler raises `exc`."""
    monkeypatch.setattr(EmbeddedRouter, "_handler", lambda self, _spec: raising(exc))
    router = EmbeddedRouter({}, routing.subscribers(events.DATASET_READY))
    router.publish(ready_event())
    [delivery] = router.run()
    return delivery.error


def dispatcher_attempts(status: int) -> int:
    """How many times the dispatcher POSTs an event its function answers `status` to (one retry allowed)."""
    settings = DispatchSettings("kafka:9092", max_retries=1, backoff_base=0.0, backoff_max=0.0)
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"error": "x"}))
    with httpx.Client(transport=transport) as client:
        result = deliver(client, "http://function/", ready_event(), settings)
    assert not result.ok and result.status == status
    return result.attempts


@pytest.mark.parametrize("exc, status", EXCEPTIONS, ids=IDS)
def test_http_entry_embedded_router_and_dispatcher_agree(exc, status, monkeypatch):
    answered, body = http_entry_status(exc)
    assert answered == status and body == {"error": error_text(exc)}
    dead_letter_at_once = 400 <= answered < 500
    # the embedded router calls "rejected" exactly what the HTTP entry answers 4xx for ...
    assert embedded_error(exc, monkeypatch).startswith("rejected: ") is dead_letter_at_once
    # ... and the dispatcher dead-letters that answer at once, and retries any other
    assert dispatcher_attempts(answered) == (1 if dead_letter_at_once else 2)


@pytest.mark.parametrize("exc, status", EXCEPTIONS, ids=IDS)
def test_infer_cloudevent_route_answers_by_the_same_rule(exc, status, tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from flts.infer import app as infer_app

    monkeypatch.setattr(infer_app, "apply_event", raising(exc))
    store = FileStore(tmp_path / "objects")
    with TestClient(infer_app.create_app({"FLTS_OBJECT_DIR": str(store.root)}, store)) as client:
        headers, body = to_binary(CloudEvent({"type": events.MODEL_SELECTED, "source": "/test"}, {}))
        response = client.post("/", content=body, headers=headers)
    assert response.status_code == status and response.json() == {"error": error_text(exc)}
