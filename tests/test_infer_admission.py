"""Issue 12: who may post events, scale workers and predict; slow bodies never hold an admission slot.

(The same slow-client scenario against a served process with 64 clients is in
tests/test_infer_process.py.)
"""
from __future__ import annotations

import contextlib
import socket
import time

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary

from flts import events
from flts.dev import testing
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, persistence_onnx, running_server
from flts.infer.app import create_app

L, M = 10, 3


@pytest.fixture
def store(file_store):
    testing.promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, 0))
    return file_store


@pytest.fixture(scope="module")
def window(lte_dir):
    return request_body(last_rows(lte_dir / "PobleSec_test.csv", 12), "time")


def serve(store, **env):
    return running_server(create_app({"FLTS_OBJECT_DIR": str(store.root), **env}, store))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def notice(store) -> tuple[dict, bytes]:
    pointer = testing.promote(store, persistence_onnx(L, len(LTE_FEATURES), M, 0))
    return to_binary(events.make_event(events.MODEL_SELECTED, "eval", pointer))


# ---------------------------------------------------------------- auth

def test_events_need_the_event_token_when_it_is_set(store):
    with serve(store, EVENT_TOKEN="ev3nt") as url:
        headers, body = notice(store)
        for extra in ({}, bearer("wrong"), {"Authorization": "Basic ev3nt"}):
            refused = httpx.post(url + "/", content=body, headers={**headers, **extra})
            assert refused.status_code == 401, refused.text
            assert "EVENT_TOKEN" in refused.json()["error"]
        accepted = httpx.post(url + "/", content=body, headers={**headers, **bearer("ev3nt")})
        assert accepted.status_code == 202, accepted.text
    with serve(store) as url:  # no EVENT_TOKEN: open (embedded runs, local tests)
        assert httpx.post(url + "/", content=body, headers=headers).status_code == 202


def test_scale_workers_falls_back_to_the_event_token(store):
    with serve(store, EVENT_TOKEN="ev3nt", MAX_WORKERS=2) as url:
        refused = httpx.post(url + "/scale_workers", json={"workers": 2})
        assert refused.status_code == 401 and "SCALE_WORKERS_TOKEN" in refused.json()["error"]
        assert httpx.post(url + "/scale_workers", json={"workers": 2}, headers=bearer("ev3nt")).status_code == 200
    with serve(store, EVENT_TOKEN="ev3nt", SCALE_WORKERS_TOKEN="sc4le", MAX_WORKERS=2) as url:  # its own wins
        assert httpx.post(url + "/scale_workers", json={"workers": 2}, headers=bearer("ev3nt")).status_code == 401
        assert httpx.post(url + "/scale_workers", json={"workers": 2}, headers=bearer("sc4le")).status_code == 200


def test_predict_and_v2_infer_need_the_api_key_when_set_health_stays_open(store, window):
    x = np.zeros((1, L, len(LTE_FEATURES)), np.float32)
    v2_body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    with serve(store, PREDICT_API_KEY="k3y") as url, httpx.Client(base_url=url) as client:
        for path, body in (("/predict", window), ("/v2/models/PobleSec/infer", v2_body)):
            for extra in ({}, bearer("nope")):
                refused = client.post(path, json=body, headers=extra)
                assert refused.status_code == 401, (path, refused.text)
                assert "PREDICT_API_KEY" in refused.json()["error"]
                assert refused.headers["www-authenticate"] == "Bearer"
            assert client.post(path, json=body, headers=bearer("k3y")).status_code == 200, path
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/v2/health/live"):
            assert client.get(path).status_code == 200, path


# ---------------------------------------------------------------- slow bodies

@contextlib.contextmanager
def slow_client(url: str, path: str = "/predict"):
    """A client that declares 1000 bytes of body, sends one, and waits."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 1000\r\n\r\n{{".encode())
    try:
        yield sock
    finally:
        sock.close()


def read_answer(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_slow_body_holds_no_admission_slot_and_gets_408(store, window):
    with serve(store, MAX_INFLIGHT=1, BODY_READ_SECONDS=1.5) as url:
        with slow_client(url) as slow, slow_client(url, "/v2/models/PobleSec/infer") as slow_v2:
            time.sleep(0.2)
            assert httpx.post(url + "/predict", json=window).status_code == 200  # the one slot is free
            started = time.monotonic()
            for sock in (slow, slow_v2):
                answer = read_answer(sock)  # the server closes the connection after the 408
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b"within 1.5 s (BODY_READ_SECONDS)" in answer and b"connection: close" in answer.lower()
            assert time.monotonic() - started < 3
        with slow_client(url, "/") as slow_event:  # the CloudEvent route has the same deadline
            assert read_answer(slow_event).startswith(b"HTTP/1.1 408")
        assert httpx.post(url + "/predict", json=window).status_code == 200


def test_on_knative_a_model_selected_needs_the_cluster_token_of_infers_trigger(store, kube, oidc_env):
    """The forged-notice defect (H1) on a cluster: only infer's Trigger may post it (flts.auth, OIDC)."""
    trigger = "infer-model-selected-oidc-eventing.knative.dev-trigger"
    with serve(store, **oidc_env("flts.dev/infer", trigger)) as url:
        headers, body = notice(store)
        for forged in (kube.token("flts", "attacker", "flts.dev/infer"), kube.token("flts", trigger)):
            refused = httpx.post(url + "/", content=body, headers={**headers, **bearer(forged)})
            assert refused.status_code == 401, refused.text
            assert "the OIDC token is refused" in refused.json()["error"]
        accepted = httpx.post(url + "/", content=body, headers={**headers, **bearer(
            kube.token("flts", trigger, "flts.dev/infer"))})
        assert accepted.status_code == 202, accepted.text
