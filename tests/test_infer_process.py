"""The inference function as separate processes: what the request path imports, the
scale-to-zero front door, and a bounded locust run against 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from flts.dev import processes, testing
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, free_port, persistence_onnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def promote(store, model_bytes: bytes, **options):
    """testing.promote with the artifact where eval puts it: the promotion bucket, the only one infer loads from by default."""
    return testing.promote(store, model_bytes, **{"artifact_bucket": "model-promotion", **options})


@pytest.fixture
def store(file_store):
    promote(file_store, persistence_onnx(10, len(LTE_FEATURES), 3, 0, factor=2.0))
    return file_store


@pytest.fixture(scope="module")
def window(lte_dir):
    return request_body(last_rows(lte_dir / "PobleSec_test.csv", 10), "time")


def _env(store, **extra) -> dict:
    return {**os.environ, "FLTS_OBJECT_DIR": str(store.root), **{k: str(v) for k, v in extra.items()}}


def process(args: list[str], env: dict, ready_url: str | None = None, timeout: float = 30.0):
    """`python <args>` from the repo for a with-block: ready once `ready_url` answers 200, stopped after."""
    return processes.running([sys.executable, *args], env=env, cwd=REPO, ready_url=ready_url, timeout=timeout)


SERVE_AND_LIST_MODULES = """
import json, sys
from starlette.testclient import TestClient
from functions.infer.main import app

window = json.loads(sys.argv[1])
with TestClient(app) as client:
    assert client.get("/readyz").status_code == 200
    for _ in range(3):
        assert client.post("/predict", json=window).status_code == 200, "predict failed"
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "pandas", "mlflow", "prophet", "sklearn", "matplotlib"})
print(json.dumps(heavy))
"""


def test_request_path_imports_no_torch_pandas_mlflow_or_prophet(store, window):
    out = subprocess.run([sys.executable, "-c", SERVE_AND_LIST_MODULES, json.dumps(window)], env=_env(store),
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _status(url: str) -> dict:
    return httpx.get(url + "/_frontdoor/status", timeout=5).json()


def _wait_for(predicate, timeout: float, what: str):
    processes.wait_until(predicate, timeout, what=what, interval=0.05)


def _gone(pid: int) -> bool:
    return not processes.pid_alive(pid)  # a zombie counts as gone


def test_front_door_scales_to_zero_and_back(store, window):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process(["-m", "flts.dev.frontdoor", "--port", str(port), "--grace", "1.0"], _env(store)):
        _wait_for(lambda: _try(lambda: _status(url)), 20, "the front door")
        assert _status(url)["backend"] == "stopped"

        first = httpx.post(url + "/predict", json=window, timeout=60)  # held while the function starts
        assert first.status_code == 200, first.text
        status = _status(url)
        assert status["backend"] == "running" and status["starts"] == 1 and len(status["cold_starts"]) == 1
        pid = status["pid"]
        with httpx.Client(base_url=url) as client:  # keep-alive traffic keeps it up
            for _ in range(20):
                assert client.post("/predict", json=window).status_code == 200

        _wait_for(lambda: _status(url)["backend"] == "stopped", 15, "scale to zero after the grace period")
        _wait_for(lambda: _gone(pid), 10, "the infer process to exit")

        again = httpx.post(url + "/predict", json=window, timeout=60)
        assert again.status_code == 200
        assert _status(url)["starts"] == 2
        last_pid = _status(url)["pid"]
    _wait_for(lambda: _gone(last_pid), 10, "the infer process to stop with the front door")


def _try(fn) -> bool:
    try:
        fn()
        return True
    except httpx.TransportError:
        return False


def test_locust_bounded_run(store):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    locust = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-u", "20", "-r", "10",
              "-H", url, "--only-summary", "--stop-timeout", "2"]
    with process(["-m", "flts.infer", "serve", "--port", str(port)], _env(store), url + "/readyz"):
        passed = subprocess.run([*locust, "-t", "8s"], cwd=REPO, capture_output=True, text=True, timeout=90,
                                env={**os.environ, "LOADTEST_MAX_P95_MS": "500"})
        assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
        assert "PASS" in passed.stdout + passed.stderr
        # The same run fails when its threshold is impossible to meet.
        failed = subprocess.run([*locust, "-t", "2s"], cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "LOADTEST_MAX_P95_MS": "0.001"})
        assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]


def _slow_client(port: int) -> socket.socket:
    """Declares a 1000-byte body, sends `{`, and waits (issue 12, M1)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")
    return sock


def _answer(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_64_slow_clients_hold_no_admission_slot(store, window):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process(["-m", "flts.infer", "serve", "--port", str(port)], _env(store, BODY_READ_SECONDS=4), url + "/readyz"):
        slow = [_slow_client(port) for _ in range(64)]  # as many as MAX_INFLIGHT
        try:
            time.sleep(0.5)  # every one is in the server, waiting for its body
            with httpx.Client(base_url=url, timeout=10) as client:
                for _ in range(5):
                    answer = client.post("/predict", json=window)
                    assert answer.status_code == 200, answer.text  # not 429: the slow ones hold no slot
            for sock in slow:  # each gets its 408 once BODY_READ_SECONDS has passed, and the connection closes
                answer = _answer(sock)
                assert answer.startswith(b"HTTP/1.1 408") and b"BODY_READ_SECONDS" in answer, answer[:300]
        finally:
            for sock in slow:
                sock.close()
