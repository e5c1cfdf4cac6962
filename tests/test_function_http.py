"""The HTTP face of the functions: functions-framework's test client on functions/preprocess/main.py.

Status codes are the retry contract: 400 bad event (dead-letter), 413 too big, 422 the claimed
object is missing, 5xx retryable.
"""
from __future__ import annotations

import http.server
import os
import socket
import threading

import flask
import functions_framework
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from flts import events
from flts.events import MAX_EVENT_BYTES
from flts.function_http import BATCH_CONTENT_TYPE, serve_events
from flts.storage import FileStore

REPO_SOURCE = "functions/preprocess/main.py"
CSV = b"time,down,up\n" + b"".join(f"2020-01-01 00:{m:02d},{m},{m * 2}\n".encode() for m in range(0, 40, 2))
READY = {"bucket": "raw-data", "object_key": "site/site.csv", "identifier": "site"}
TRAINING = {"model_type": "GRU", "config_hash": "c0ffee00c0ffee00", "identifier": "site"}
CE_HEADERS = {"ce-specversion": "1.0", "ce-type": events.DATASET_READY, "ce-source": "/test", "ce-id": "1",
              "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def client(repo):
    app = functions_framework.create_app(target="preprocess", source=str(repo / REPO_SOURCE))
    return app.test_client()


@pytest.fixture
def store(tmp_path, monkeypatch) -> FileStore:
    """The function reads os.environ: point it at a private object dir and clear knobs that would interfere."""
    for name in ("K_SINK", "S3_ENDPOINT", "EMIT_INFERENCE_DATA", "FORCE_REPROCESS", "MAX_UPLOAD_BYTES", "EVENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLTS_OBJECT_DIR", str(tmp_path / "objects"))
    store = FileStore(tmp_path / "objects")
    store.put_bytes("raw-data", "site/site.csv", CSV)
    return store


def post_binary(client, data: dict, event_type: str = events.DATASET_READY):
    return client.post("/", data=orjson.dumps(data), headers=CE_HEADERS | {"ce-type": event_type})


def assert_training_data_reply(response, store: FileStore):
    assert response.status_code == 200, response.data
    assert response.headers["ce-type"] == events.TRAINING_DATA  # a binary-mode CloudEvent reply
    assert response.headers["ce-source"] == "/flts/preprocess"
    assert response.headers["ce-subject"] == "site"
    assert response.headers["Content-Type"] == "application/json"
    reply = from_http(dict(response.headers), response.data)
    claim = events.parse_data(reply, (events.TRAINING_DATA,))
    assert claim.rows == 16 and claim.test_rows == 4
    assert store.exists(claim.bucket, claim.object_key) and store.exists(claim.bucket, claim.test_object_key)
    return claim


def test_binary_cloudevent_gets_a_training_data_reply(client, store):
    assert_training_data_reply(post_binary(client, READY), store)


def test_structured_cloudevent_gets_the_same_reply(client, store):
    headers, body = to_structured(events.make_event(events.DATASET_READY, "test", READY))
    first = assert_training_data_reply(client.post("/", data=body, headers=headers), store)
    assert headers["content-type"] == "application/cloudevents+json"
    headers, body = to_binary(events.make_event(events.DATASET_READY, "test", READY))
    again = assert_training_data_reply(client.post("/", data=body, headers=headers), store)
    assert again.config_hash == first.config_hash  # the redelivery is idempotent


def test_two_outputs_come_as_a_batch(client, store, monkeypatch):
    monkeypatch.setenv("EMIT_INFERENCE_DATA", "1")
    response = post_binary(client, READY)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == BATCH_CONTENT_TYPE
    batch = orjson.loads(response.data)
    assert [e["type"] for e in batch] == [events.TRAINING_DATA, events.INFERENCE_DATA]
    assert batch[0]["data"]["config_hash"] == batch[1]["data"]["config_hash"]


@pytest.mark.parametrize("data, message", [
    ({"bucket": "raw-data", "identifier": "site"}, "flts.dataset.ready: missing field 'object_key'"),
    (READY | {"bucket": 7}, "flts.dataset.ready: field 'bucket': "),
    (READY | {"object_key": "../secret"}, "object key '../secret' contains a '.' or '..' path segment"),
    ([1, 2], "data must be a JSON object, got list"),
])
def test_malformed_event_data_is_400_naming_the_problem(client, store, data, message):
    response = post_binary(client, data)
    assert response.status_code == 400
    assert message in orjson.loads(response.data)["error"]
    assert list(store.list_keys("processed-data")) == []


@pytest.mark.parametrize("body, headers", [
    (b"{}", {"Content-Type": "application/json"}),  # no CloudEvent attributes at all
    (b"not json", {"Content-Type": "application/cloudevents+json"}),
    (orjson.dumps({"type": events.DATASET_READY, "source": "/t", "id": "1", "data": READY}),
     {"Content-Type": "application/cloudevents+json"}),  # no specversion
])
def test_not_a_cloudevent_is_400(client, store, body, headers):
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 400
    assert orjson.loads(response.data)["error"].startswith("not a valid CloudEvent:")


def test_unknown_type_is_400(client, store):
    response = post_binary(client, READY, event_type="flts.bogus")
    assert response.status_code == 400
    assert "event type 'flts.bogus' is not handled here" in orjson.loads(response.data)["error"]


def test_missing_object_is_422_naming_it(client, store):
    response = post_binary(client, READY | {"object_key": "site/gone.csv"})
    assert response.status_code == 422
    assert orjson.loads(response.data) == {"error": "object not found: raw-data/site/gone.csv"}


def test_bad_dataset_is_400_naming_the_problem(client, store):
    store.put_bytes("raw-data", "site/dup.csv", b"time,down\n2020-01-01 00:00,1\n2020-01-01 00:00,2\n")
    response = post_binary(client, READY | {"object_key": "site/dup.csv"})
    assert response.status_code == 400
    assert orjson.loads(response.data)["error"].startswith(
        "site/dup.csv: duplicate timestamp 2020-01-01 00:00:00 in row 2 (column 'time': ")


def test_a_body_over_the_limit_is_413(client, store):
    big = READY | {"padding": "x" * MAX_EVENT_BYTES}
    response = post_binary(client, big)
    assert response.status_code == 413
    assert f"over the limit of {MAX_EVENT_BYTES}" in orjson.loads(response.data)["error"]


# ---------------------------------------------------------------- K_SINK (Knative SinkBinding)

@pytest.fixture
def sink():
    """A real HTTP server on 127.0.0.1 that records what it receives; stopped after the test."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", received
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_outputs_go_to_k_sink_when_set(client, store, sink, monkeypatch):
    url, received = sink
    monkeypatch.setenv("K_SINK", url)
    response = post_binary(client, READY)
    assert response.status_code == 202 and response.data == b""
    [(headers, body)] = received
    event = from_http({k.lower(): v for k, v in headers.items()}, body)
    assert event["type"] == events.TRAINING_DATA and event.data["identifier"] == "site"


def test_an_unreachable_sink_is_502(client, store, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("K_SINK", f"http://127.0.0.1:{port}/")
    response = post_binary(client, READY)
    assert response.status_code == 502
    assert "cannot deliver the output to K_SINK" in orjson.loads(response.data)["error"]


# ---------------------------------------------------------------- EVENT_TOKEN (flts.auth)

@pytest.mark.parametrize(("authorization", "message"), [
    (None, "needs 'Authorization: Bearer <token>'"),
    ("Basic c2VjcmV0", "needs 'Authorization: Bearer <token>'"),
    ("Bearer wrong", "the bearer token is not valid"),
])
def test_with_a_token_an_event_without_it_is_401_naming_the_problem(client, store, monkeypatch,
                                                                    authorization, message):
    monkeypatch.setenv("EVENT_TOKEN", "s3cret")
    headers = CE_HEADERS | ({"Authorization": authorization} if authorization else {})
    response = client.post("/", data=orjson.dumps(READY), headers=headers)
    assert response.status_code == 401
    assert message in orjson.loads(response.data)["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert list(store.list_keys("processed-data")) == []  # nothing was done


def test_with_a_token_an_event_that_carries_it_is_handled(client, store, monkeypatch):
    monkeypatch.setenv("EVENT_TOKEN", "s3cret")
    response = client.post("/", data=orjson.dumps(READY), headers=CE_HEADERS | {"Authorization": "Bearer s3cret"})
    assert_training_data_reply(response, store)


def test_with_a_token_the_health_routes_stay_open(client, store, monkeypatch):
    monkeypatch.setenv("EVENT_TOKEN", "s3cret")
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_outputs_to_k_sink_carry_the_token(client, store, sink, monkeypatch):
    url, received = sink
    monkeypatch.setenv("K_SINK", url)
    monkeypatch.setenv("EVENT_TOKEN", "s3cret")
    response = client.post("/", data=orjson.dumps(READY), headers=CE_HEADERS | {"Authorization": "Bearer s3cret"})
    assert response.status_code == 202
    [(headers, _)] = received
    assert headers["Authorization"] == "Bearer s3cret"


def test_without_a_token_nothing_is_asked_or_sent(client, store, sink, monkeypatch):
    url, received = sink
    monkeypatch.setenv("K_SINK", url)
    assert post_binary(client, READY).status_code == 202
    [(headers, _)] = received
    assert "Authorization" not in headers


# ---------------------------------------------------------------- serve_events with other handlers

def app_with(handler) -> flask.testing.FlaskClient:
    app = flask.Flask("test")
    app.add_url_rule("/", "event", lambda: serve_events(flask.request, handler, env={}), methods=["POST"])
    return app.test_client()


def test_an_unexpected_failure_is_500_and_retryable():
    def handler(event, env):
        raise OSError("the disk is full")

    response = app_with(handler).post("/", data=orjson.dumps(READY), headers=CE_HEADERS)
    assert response.status_code == 500
    assert orjson.loads(response.data) == {"error": "OSError: the disk is full"}


def test_no_output_is_202_without_a_body():
    seen = []

    def handler(event, env):
        seen.append((event["type"], event.data))
        return []

    response = app_with(handler).post("/", data=orjson.dumps(READY), headers=CE_HEADERS)
    assert response.status_code == 202 and response.data == b""
    assert seen == [(events.DATASET_READY, READY)]


def test_handler_gets_the_event_as_sent():
    event = CloudEvent({"type": events.MODEL_TRAINING, "source": "/flts/train", "subject": "s"},
                       {"status": "RUNNING", "model_type": "GRU", "config_hash": "0123456789", "identifier": "s"})
    headers, body = to_binary(event)
    got = []
    response = app_with(lambda e, env: got.append(e) or []).post("/", data=body, headers=headers)
    assert response.status_code == 202
    assert got[0]["id"] == event["id"] and got[0].data == event.data


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_routes_answer_200_without_an_event(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_a_get_elsewhere_is_not_taken_for_health(client):
    assert client.get("/").status_code == 400


def test_a_generator_handler_reaches_k_sink_as_it_goes(sink):
    """A trainer yields RUNNING, then trains: RUNNING must be at the sink before the handler goes on."""
    url, received = sink
    seen_at_sink_before_second = []

    def handler(event, env):
        yield events.make_event(events.MODEL_TRAINING, "train", {**TRAINING, "status": "RUNNING"})
        seen_at_sink_before_second.append(len(received))
        yield events.make_event(events.MODEL_TRAINING, "train", {**TRAINING, "status": "SUCCESS", "run_id": "r1"})

    app = flask.Flask("test")
    app.add_url_rule("/", "event", lambda: serve_events(flask.request, handler, env={"K_SINK": url}), methods=["POST"])
    response = app.test_client().post("/", data=orjson.dumps(READY), headers=CE_HEADERS)
    assert response.status_code == 202
    assert seen_at_sink_before_second == [1]
    statuses = [orjson.loads(body)["status"] for _, body in received]
    assert statuses == ["RUNNING", "SUCCESS"]


# ---------------------------------------------------------------- Knative sender identity (flts.auth, OIDC)
# Tokens signed by a real kube-apiserver (TokenRequest, as Knative gets them for a Trigger's or a
# SinkBinding's service account), checked against its discovery document and JWKS over HTTPS.

AUDIENCE = "flts.dev/preprocess"
TRIGGER_ACCOUNT = "preprocess-dataset-ready-oidc-eventing.knative.dev-trigger"


@pytest.fixture
def oidc(kube, oidc_env, monkeypatch):
    """preprocess as rendered for Knative: it accepts its Trigger's tokens only."""
    for name, value in oidc_env(AUDIENCE, TRIGGER_ACCOUNT).items():
        monkeypatch.setenv(name, value)
    return kube


def post_with(client, token: str | None):
    return client.post("/", data=orjson.dumps(READY),
                       headers=CE_HEADERS | ({"Authorization": f"Bearer {token}"} if token else {}))


def test_a_token_the_cluster_signed_for_its_trigger_is_accepted(client, store, oidc):
    assert_training_data_reply(post_with(client, oidc.token("flts", TRIGGER_ACCOUNT, AUDIENCE)), store)


def foreign_token(claims: dict) -> str:
    """The same claims, signed with a key the cluster does not have."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    return jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
                      headers={"kid": "forged"})


@pytest.mark.parametrize(("who", "message"), [
    (lambda c: None, f"an OIDC token for audience '{AUDIENCE}'"),
    (lambda c: c.token("flts", TRIGGER_ACCOUNT, "flts.dev/infer"), f"not issued for audience '{AUDIENCE}'"),
    (lambda c: c.token("flts", TRIGGER_ACCOUNT), f"not issued for audience '{AUDIENCE}'"),  # the API server's
    (lambda c: c.token("flts", "intruder", AUDIENCE), "is not one of EVENT_OIDC_SENDERS"),
    (lambda c: c.token("elsewhere", TRIGGER_ACCOUNT, AUDIENCE), "not a service account of namespace 'flts'"),
    (lambda c: foreign_token(jwt_claims(c.token("flts", TRIGGER_ACCOUNT, AUDIENCE))), "forged"),
    (lambda c: "not-a-jwt", "the OIDC token is refused"),
], ids=["none", "other-audience", "api-audience", "other-sender", "other-namespace", "foreign-key", "garbage"])
def test_any_other_credential_is_401_naming_the_problem(client, store, oidc, who, message):
    response = post_with(client, who(oidc))
    assert response.status_code == 401, response.data
    assert message in orjson.loads(response.data)["error"]
    assert list(store.list_keys("processed-data")) == []  # nothing was done


def jwt_claims(token: str) -> dict:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})


def test_keys_out_of_reach_is_503_so_the_delivery_is_retried(client, store, oidc, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("EVENT_OIDC_ISSUER_URL", f"https://127.0.0.1:{port}")
    response = post_with(client, oidc.token("flts", TRIGGER_ACCOUNT, AUDIENCE))
    assert response.status_code == 503
    assert "cannot check the OIDC token now" in orjson.loads(response.data)["error"]


def test_outputs_to_k_sink_carry_the_mounted_token_as_it_is_renewed(client, store, oidc, sink, tmp_path, monkeypatch):
    """Knative's SinkBinding mounts a token for the Broker at /oidc/token and rewrites it before it expires."""
    from flts.auth import EventAuthSettings, EventGate

    url, received = sink
    mounted = tmp_path / "oidc-token"
    monkeypatch.setenv("K_SINK", url)
    monkeypatch.setenv("EVENT_TOKEN_FILE", str(mounted))
    broker_audience = "eventing.knative.dev/broker/flts/flts"
    mounted_tokens = []
    for _ in range(2):  # the second time, a renewed token
        mounted_tokens.append(oidc.token("flts", "preprocess-emits-oidc-sources.knative.dev-sinkbinding",
                                         broker_audience, seconds=600 + len(mounted_tokens)))
        mounted.write_text(mounted_tokens[-1] + "\n")
        assert post_with(client, oidc.token("flts", TRIGGER_ACCOUNT, AUDIENCE)).status_code == 202
    assert mounted_tokens[0] != mounted_tokens[1]
    assert [h["Authorization"] for h, _ in received] == [f"Bearer {t}" for t in mounted_tokens]
    # what the Broker would check: the token is the cluster's, for its audience
    broker = EventGate(EventAuthSettings(oidc_audience=broker_audience, oidc_issuer_url=oidc.url,
                                         oidc_account_dir=os.environ["EVENT_OIDC_ACCOUNT_DIR"]))
    assert [broker.refusal(headers["Authorization"]) for headers, _ in received] == [None, None]
