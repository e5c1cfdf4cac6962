"""The gateway on the real local stack: an upload over HTTP through to a served forecast, every
refusal, Kafka down (503, then one pipeline for the retried upload), and the status page in
headless Chromium (its screenshot is kept: the path is printed).

One stack for the module (every deployment, the gateway included, behind the real dispatcher on
the session's Kafka, S3 server and MLflow); every process it started is checked dead at the end.
"""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest

from flts import events, forecasters, routing
from flts.dev import infra as fi
from flts.dev import processes, stack
from flts.dev.infra import kafka as infra_kafka
from flts.dev.infra import service as infra_service
from flts.dev.testing import stack_pids
from flts.intervals import IntervalScaling

pytestmark = pytest.mark.stack

TRAIN_ROWS, TEST_ROWS = 3000, 600
PIPELINE_TIMEOUT = 300.0
MAX_UPLOAD = 2_000_000
ENV = {"EPOCHS": "3", "PATIENCE": "2", "PROMOTION_SEARCH_DELAY_SEC": "0.5", "DISPATCH_OFFSET_RESET": "latest",
       "MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / ".flts" / "test-artifacts"


@pytest.fixture(scope="module")
def gateway_stack(infra):
    """(cfg, gateway URL, token); the stack is stopped at the end and no process of it is left."""
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=infra, function_base_port=base + 1, dispatcher_port=base)
    seen: set[int] = set()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**ENV, "DISPATCH_GROUP_PREFIX": f"gateway-{uuid.uuid4().hex[:8]}-"}.items():
            mp.setenv(name, value)  # the processes inherit the shell's environment
        mp.delenv("GATEWAY_TOKEN", raising=False)  # the stack's EVENT_TOKEN guards the gateway
        try:
            stack.up(cfg, with_infra=False)
            url = stack.gateway_url(cfg)
            assert url, "the gateway is not up"
            yield cfg, url, stack.gateway_token(cfg), seen
        finally:
            seen |= stack_pids(cfg)
            stack.down(cfg, with_infra=False)
    left = [pid for pid in seen if processes.pid_alive(pid)]
    assert not left, f"processes outlived `down`: {left}"



@pytest.fixture(scope="module")
def elborn(lte_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("elborn")
    train = pd.read_csv(lte_dir / "ElBorn.csv").tail(TRAIN_ROWS)
    test = pd.read_csv(lte_dir / "ElBorn_test.csv").head(TEST_ROWS)
    paths = folder / "ElBorn_slice.csv", folder / "ElBorn_slice_test.csv"
    train.to_csv(paths[0], index=False)
    test.to_csv(paths[1], index=False)
    return paths[0], paths[1], pd.concat([train, test], ignore_index=True)


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, timeout=60, trust_env=False, headers=headers)


def _wait_served(client: httpx.Client, identifier: str, timeout: float) -> dict:
    deadline, report = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        report = client.get(f"/pipelines/{identifier}").json()
        if report.get("state") == "promoted":
            return report
        assert report.get("state") != "dead-lettered", report
        time.sleep(1.0)
    raise AssertionError(f"not served within {timeout:.0f}s: {report}")


# --------------------------------------------------------------------------- upload → forecast
def test_upload_over_http_reaches_a_served_forecast_and_the_page_shows_it(gateway_stack, elborn, tmp_path):
    cfg, url, token, seen = gateway_stack
    train_csv, test_csv, history = elborn
    identifier = f"ElBorn-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    answer = stack.upload_via_gateway(url, token, train_csv, test_csv, identifier)
    assert answer["status_url"] == f"{url}/pipelines/{identifier}" and not answer["duplicate"]
    with _client(url) as client:
        report = _wait_served(client, identifier, PIPELINE_TIMEOUT)
    print(f"\nupload over HTTP → served: {time.monotonic() - started:.1f}s")
    seen |= stack_pids(cfg)
    stages = {s["stage"]: s for s in report["stages"]}
    trainers = [d.name for d in routing.DEPLOYMENTS if d.function == "train"]
    assert list(stages) == ["upload", "preprocess", *trainers, "eval", "served"]
    assert all(stages[t]["state"] == "FINISHED" and stages[t]["time"] for t in trainers), report["stages"]
    assert {stages[t]["model_type"] for t in trainers} == set(forecasters.names())
    assert stages["upload"]["id"] == answer["id"] and stages["preprocess"]["rows"] > 0
    champion = report["champion"]
    assert stages["eval"]["run_id"] == champion["run_id"] and champion["config_hash"] == stages["preprocess"]["config_hash"]
    assert champion["score"] > 0 and report["dead_letters"] == []

    # the served forecast: infer (through its front door) answers with the champion
    infer = next(p.url for p in stack.plan(cfg) if p.scale_to_zero)
    pointer = httpx.get(f"{url}/download/pointer/{identifier}", headers={"Authorization": f"Bearer {token}"}).json()
    end = len(history) - TEST_ROWS + 110
    rows = max(pointer["input_seq_len"], IntervalScaling.of(pointer.get("intervals")).history_rows(pointer["output_seq_len"]))
    window = history.ffill().iloc[end - rows:end]  # what /readyz states as history_rows
    body = {"data": {c: window[c].tolist() for c in window.columns}, "index_col": "time", "identifier": identifier}
    predicted = httpx.post(f"{infer.rstrip('/')}/predict", json=body, timeout=60, trust_env=False)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["run_id"] == champion["run_id"]

    # downloads: the processed Parquet, the model and its pointer
    with _client(url, token) as client:
        parquet = client.get(f"/download/processed/{identifier}/{champion['config_hash']}/train.parquet")
        assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
        model = client.get(f"/download/model/{identifier}")
        assert model.status_code == 200 and len(model.content) > 100
        assert client.get(f"/download/pointer/{identifier}").json()["run_id"] == champion["run_id"]
        plot = client.get(f"/plot/{identifier}.png")
        assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"

    # the page, in headless Chromium: the champion, and its plot loaded
    dom = _chromium(["--dump-dom", f"{url}/"], tmp_path).stdout
    assert f"id=\"{identifier}\"" in dom and f"Champion: {champion['model_type']}" in dom
    assert f"src=\"/plot/{identifier}.png\"" in dom and "data-loaded=\"1\"" in dom, dom[:3000]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "gateway-status-page.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,2400", f"{url}/#{identifier}"], tmp_path)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    print(f"status page screenshot: {shot}")


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: bash infra/install.sh installs it (Debian package chromium)")
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:6]}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # it exits when done
    assert done.returncode == 0, done.stderr[-2000:]
    return done


# --------------------------------------------------------------------------- refusals
def test_every_bad_input_is_refused_with_its_status(gateway_stack):
    cfg, url, token, _ = gateway_stack
    with _client(url, token) as client, _client(url) as anonymous:
        too_big = b"time,down\n" + b"2018-03-01 00:00:00,1\n" * (MAX_UPLOAD // 20)
        refused = client.post("/upload/Big", content=too_big)
        assert refused.status_code == 413 and "MAX_UPLOAD_BYTES" in refused.json()["error"]

        def chunks():  # no Content-Length: the limit is counted while streaming
            yield b"time,down\n"
            for _ in range(MAX_UPLOAD // 10_000 + 2):
                yield b"2018-03-01 00:00:00,1\n" * 500
        assert client.post("/upload/Big", content=chunks()).status_code == 413
        assert client.post("/upload/Empty", content=b"").status_code == 400
        png = client.post("/upload/Png", content=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        assert png.status_code == 400 and "not a CSV" in png.json()["error"]
        for bad in ("%2E%2E", "a..b", "a%2Fb", ".x"):
            assert client.post(f"/upload/{bad}", content=b"time,down\n1,2\n").status_code in (400, 404), bad
        assert client.get("/download/processed/nobody/none/train.parquet").status_code == 404
        assert client.get("/download/processed/x/%2E%2E/y").status_code == 400
        assert client.get("/download/model/nobody").status_code == 404
        assert anonymous.post("/upload/Anon", content=b"time,down\n1,2\n").status_code == 401
        assert anonymous.get("/download/pointer/nobody").status_code == 401
        assert anonymous.get("/pipelines/nobody").status_code == 404  # open, nothing known
    s3 = fi.client_env(cfg.infra)
    from flts.storage import S3Store

    store = S3Store(s3["S3_ENDPOINT"], s3["S3_ACCESS_KEY"], s3["S3_SECRET_KEY"])
    for prefix in ("Big/", "Empty/", "Png/", "Anon/"):
        assert not list(store.list_keys("raw-data", prefix)), prefix  # nothing refused was stored


# --------------------------------------------------------------------------- Kafka down
def test_kafka_down_is_503_and_the_retried_upload_starts_one_pipeline(gateway_stack, elborn, infra):
    from test_fullstack import TopicReader

    cfg, url, token, _ = gateway_stack
    train_csv, test_csv, _history = elborn
    identifier = f"Down-{uuid.uuid4().hex[:8]}"
    reader = TopicReader(fi.kafka_bootstrap(infra), [routing.topic_of(events.DATASET_READY)])
    try:
        assert infra_service.stop_service(infra, "kafka")
        try:
            with pytest.raises(stack.GatewayBusy, match=r"Retry-After \d+s"):
                stack.upload_via_gateway(url, token, train_csv, None, identifier)
        finally:
            infra_kafka.start_kafka(infra)
        deadline, answer = time.monotonic() + 120, None
        while answer is None:  # what a client does with Retry-After
            try:
                answer = stack.upload_via_gateway(url, token, train_csv, None, identifier)
            except stack.GatewayBusy:
                assert time.monotonic() < deadline, "still 503 two minutes after Kafka came back"
                time.sleep(2)
        assert not answer["duplicate"]
        again = stack.upload_via_gateway(url, token, train_csv, None, identifier)
        assert again["duplicate"] and again["id"] == answer["id"]
        seen = reader.until(lambda s: len(s) >= 1, identifier, 30)
        time.sleep(3)  # anything written twice would be here by now
        reader.until(lambda s: True, identifier, 1)
    finally:
        reader.close()
    ready = [d for kind, d in seen if kind == events.DATASET_READY]
    assert len(ready) == 1, seen
