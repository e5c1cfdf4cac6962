"""Authenticated event delivery (EVENT_TOKEN): the rule, the dispatcher's ingress and its deliveries.

The functions' `POST /` is checked in tests/test_function_http.py.
"""
from __future__ import annotations

import threading

import httpx
import orjson
import pytest
from cloudevents.conversion import to_binary

from flts import events
from flts.auth import bearer_header, event_token, refusal
from flts.dev.testing import read_records
from flts.dispatcher.delivery import deliver
from flts.dispatcher.ingress import IngressServer
from flts.dispatcher.settings import DispatchSettings

READY = {"bucket": "raw-data", "object_key": "site/site.csv", "identifier": "site"}


# --------------------------------------------------------------------------- the rule
def test_no_token_means_open():
    assert refusal(None, "") is None and refusal("Bearer anything", None) is None
    assert bearer_header("") == {} and bearer_header(None) == {}


@pytest.mark.parametrize(("header", "why"), [
    (None, "needs 'Authorization: Bearer <token>'"),
    ("", "needs 'Authorization: Bearer <token>'"),
    ("Bearer", "needs 'Authorization: Bearer <token>'"),
    ("Basic dXNlcjpwYXNz", "needs 'Authorization: Bearer <token>'"),
    ("Bearer wrong", "the bearer token is not valid"),
    ("Bearer s3cret-and-more", "the bearer token is not valid"),
])
def test_a_missing_or_wrong_token_is_refused_with_the_reason(header, why):
    assert why in refusal(header, "s3cret")


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", bearer_header("s3cret")["Authorization"]])
def test_the_right_token_passes(header):
    assert refusal(header, "s3cret") is None


def test_event_token_is_read_from_the_environment(monkeypatch):
    assert event_token({"EVENT_TOKEN": " t0k \n"}) == "t0k"  # a secret file's newline is no part of it
    assert event_token({}) == ""
    monkeypatch.setenv("EVENT_TOKEN", "from-env")
    assert event_token() == "from-env"


# --------------------------------------------------------------------------- the dispatcher's ingress
class Backend:
    """What the ingress answers from, without Kafka: records what it is asked to write."""

    def __init__(self):
        self.ingested = []

    def health(self) -> dict:
        return {}

    def ready(self) -> bool:
        return True

    def ingest(self, headers, body, sender=None) -> list[dict]:
        self.ingested.append(body)
        return [{"id": "1", "type": events.DATASET_READY, "topic": "dataset-ready", "offset": 0}]


@pytest.fixture
def ingress():
    """An ingress on a free port that requires the token `s3cret`; stopped after the test."""
    backend = Backend()
    server = IngressServer(("127.0.0.1", 0), backend, token="s3cret")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", backend
    server.shutdown()
    server.server_close()
    thread.join(5)


def _event_request():
    headers, body = to_binary(events.make_event(events.DATASET_READY, "upload", READY))
    return headers, body


@pytest.mark.parametrize(("authorization", "why"), [
    (None, "needs 'Authorization: Bearer <token>'"),
    ("Bearer nope", "the bearer token is not valid"),
])
def test_the_ingress_refuses_an_event_without_the_token(ingress, authorization, why):
    url, backend = ingress
    headers, body = _event_request()
    response = httpx.post(url, headers={**headers, **({"Authorization": authorization} if authorization else {})},
                          content=body)
    assert response.status_code == 401
    assert why in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert backend.ingested == []  # nothing reached Kafka


def test_the_ingress_takes_an_event_with_the_token(ingress):
    url, backend = ingress
    headers, body = _event_request()
    response = httpx.post(url, headers={**headers, **bearer_header("s3cret")}, content=body)
    assert response.status_code == 202, response.text
    assert backend.ingested == [body]


def test_the_ingress_health_routes_stay_open(ingress):
    url, _ = ingress
    assert httpx.get(url + "healthz").status_code == 200 and httpx.get(url + "readyz").status_code == 200


def test_the_ingress_takes_its_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("EVENT_TOKEN", "from-env")
    server = IngressServer(("127.0.0.1", 0), Backend())
    try:
        assert server.token == "from-env"
    finally:
        server.server_close()


# --------------------------------------------------------------------------- the dispatcher's deliveries
def _deliver_capturing(monkeypatch, env_token: str | None, **kwargs) -> dict:
    if env_token is None:
        monkeypatch.delenv("EVENT_TOKEN", raising=False)
    else:
        monkeypatch.setenv("EVENT_TOKEN", env_token)
    seen = {}

    def answer(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(202)

    client = httpx.Client(transport=httpx.MockTransport(answer))
    event = events.make_event(events.DATASET_READY, "upload", READY)
    result = deliver(client, "http://function/", event, DispatchSettings("kafka:9092", max_retries=0), **kwargs)
    assert result.ok
    return seen


def test_deliveries_carry_the_dispatchers_token(monkeypatch):
    assert _deliver_capturing(monkeypatch, "s3cret")["authorization"] == "Bearer s3cret"
    assert _deliver_capturing(monkeypatch, None, token="given")["authorization"] == "Bearer given"


def test_without_a_token_deliveries_carry_none(monkeypatch):
    assert "authorization" not in _deliver_capturing(monkeypatch, None)


def test_a_401_from_a_function_is_a_dead_letter_at_once(monkeypatch):
    """A wrong token will not be right on the next attempt: no retries, the event is kept in the DLQ."""
    monkeypatch.delenv("EVENT_TOKEN", raising=False)
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, content=orjson.dumps({"error": "the bearer token is not valid"}))

    event = events.make_event(events.DATASET_READY, "upload", READY)
    result = deliver(httpx.Client(transport=httpx.MockTransport(answer)), "http://function/", event,
                     DispatchSettings("kafka:9092", max_retries=3))
    assert not result.ok and result.status == 401 and len(calls) == 1
    assert "the bearer token is not valid" in result.error


# --------------------------------------------------------------------------- end to end, real Kafka
@pytest.mark.stack
def test_a_token_protected_pipeline_step_through_kafka(infra, tmp_path, monkeypatch, repo):
    """Kafka → dispatcher (sends the token) → preprocess (requires it) → K_SINK = the ingress
    (requires it, the function sends it) → Kafka. Without the token, both endpoints answer 401."""
    import uuid

    from flts.dev import infra as fi
    from flts.dev import processes
    from flts.dev.testing import free_port
    from flts.dispatcher import Dispatcher
    from flts.dispatcher.producer import EventProducer
    from flts.dispatcher.routes import Routes, Subscription
    from flts.spec import functions_framework_command
    from flts.storage import FileStore

    token = uuid.uuid4().hex
    monkeypatch.setenv("EVENT_TOKEN", token)  # the dispatcher in this process reads it
    tag = uuid.uuid4().hex[:10]
    inbox, outbox = f"t-{tag}-ready", f"t-{tag}-training"
    fi.create_topics(infra, [inbox, outbox, f"dlq-{inbox}"])
    objects = tmp_path / "objects"
    FileStore(objects).put_bytes("raw-data", "site/site.csv", b"time,down,up\n" + b"".join(
        f"2020-01-01 00:{m:02d},{m},{m * 2}\n".encode() for m in range(0, 40, 2)))
    port, ingress_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/"
    command = functions_framework_command(str(repo / "functions/preprocess/main.py"), "preprocess", "127.0.0.1", port)
    function = processes.spawn(command, env={"EVENT_TOKEN": token, "K_SINK": f"http://127.0.0.1:{ingress_port}/",
                                             "FLTS_OBJECT_DIR": str(objects)}, log_path=tmp_path / "fn.log")
    routes = Routes({events.DATASET_READY: inbox, events.TRAINING_DATA: outbox},
                    (Subscription("preprocess", url, (events.DATASET_READY,), (inbox,)),))
    dispatcher = producer = None
    try:
        processes.wait_until(lambda: processes.http_ok(url + "healthz"), 60, proc=function, what="preprocess",
                             log_path=tmp_path / "fn.log", interval=0.2)
        settings = DispatchSettings(fi.kafka_bootstrap(infra), ingress_port=ingress_port, max_retries=0,
                                    group_prefix=f"test-{tag}-")
        dispatcher = Dispatcher(settings, routes).start()
        dispatcher.wait_ready()
        producer = EventProducer(fi.kafka_bootstrap(infra), client_id="test-auth")
        producer.send_event(inbox, events.make_event(events.DATASET_READY, "upload", READY))
        [record] = _read(fi.kafka_bootstrap(infra), outbox, 1)
        assert dict(record.headers)["ce_type"] == events.TRAINING_DATA.encode()
        assert orjson.loads(record.value)["identifier"] == "site"

        headers, body = _event_request()
        for endpoint in (url, dispatcher.ingress_url):  # nobody else gets in
            refused = httpx.post(endpoint, headers=headers, content=body)
            assert refused.status_code == 401, (endpoint, refused.text)
    finally:
        if producer is not None:
            producer.close()
        if dispatcher is not None:
            dispatcher.stop()
        processes.stop_group(function.pid, 15)
        function.wait()


def _read(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list:
    return read_records(bootstrap, topic, count, timeout)
