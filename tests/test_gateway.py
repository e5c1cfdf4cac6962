"""The gateway in process: a FileStore, and the event sink replaced by a recorder (or one that is down)."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from flts import events
from flts.gateway import emit as gateway_emit
from flts.gateway.app import create_app
from flts.storage import put_json

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = b"time,down,up\n2018-01-01 00:00:00,1,2\n2018-01-01 00:02:00,3,4\n"


class Sink:
    def __init__(self):
        self.events, self.down = [], False

    def __call__(self, event):
        if self.down:
            raise gateway_emit.Unavailable("K_SINK answered 503: could not write to Kafka")
        self.events.append(event)


@pytest.fixture
def gateway(file_store):
    sink = Sink()
    env = {"GATEWAY_TOKEN": TOKEN, "MAX_UPLOAD_BYTES": "1000", "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    client = TestClient(create_app(env, store=file_store, emit=sink))
    return client, sink, file_store


def test_upload_streams_into_raw_data_and_emits_dataset_ready_once(gateway):
    client, sink, store = gateway
    first = client.post("/upload/PobleSec", content=CSV, headers=AUTH)
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status_url"].endswith("/pipelines/PobleSec") and first.headers["location"] == body["status_url"]
    assert body["id"].startswith("upload-") and not body["duplicate"]
    (event,) = sink.events
    assert event["type"] == events.DATASET_READY and event["id"] == body["id"] and event["subject"] == "PobleSec"
    assert store.get_bytes("raw-data", event.data["object_key"]) == CSV
    again = client.post("/upload/PobleSec", content=CSV, headers=AUTH)  # same bytes: no second pipeline
    assert again.status_code == 202 and again.json()["id"] == body["id"] and again.json()["duplicate"]
    assert len(sink.events) == 1
    status = client.get("/pipelines/PobleSec").json()
    assert status["upload"]["id"] == body["id"] and status["state"] == "running"
    assert [s["stage"] for s in status["stages"]] == ["upload", "preprocess"]


def test_a_test_file_first_then_the_training_file_naming_it(gateway):
    client, sink, store = gateway
    test = client.post("/upload/Bike?part=test", content=CSV.replace(b"2018-01-01", b"2018-01-02"), headers=AUTH)
    assert test.status_code == 201 and not sink.events
    ready = client.post(f"/upload/Bike?test={test.json()['test']}", content=CSV, headers=AUTH)
    assert ready.status_code == 202
    assert sink.events[0].data["test_object_key"] == test.json()["object_key"]
    assert client.post("/upload/Bike?test=0123456789abcdef", content=CSV, headers=AUTH).status_code == 400


@pytest.mark.parametrize("body, why", [
    (b"", "empty"), (b"   \n", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    (b"just one column\nno commas here\n", "no comma"), (b"time,down\n", "without rows"),
    ("time,down\n\u00e9,1\n".encode("latin-1"), "UTF-8"),
])
def test_a_body_that_is_not_a_csv_is_refused(gateway, body, why):
    client, sink, store = gateway
    answer = client.post("/upload/x", content=body, headers=AUTH)
    assert answer.status_code == 400 and why in answer.json()["error"]
    assert not sink.events and not list(store.list_keys("raw-data"))


def test_too_large_is_413_before_it_is_stored(gateway):
    client, sink, store = gateway
    big = b"time,down\n" + b"2018-01-01 00:00:00,1\n" * 100
    assert client.post("/upload/x", content=big, headers=AUTH).status_code == 413  # Content-Length

    def chunked():  # no Content-Length: counted while streaming
        for _ in range(100):
            yield b"2018-01-01 00:00:00,1\n"
    answer = client.post("/upload/x", content=chunked(), headers=AUTH)
    assert answer.status_code == 413 and "MAX_UPLOAD_BYTES" in answer.json()["error"]
    assert not sink.events and not list(store.list_keys("raw-data"))


@pytest.mark.parametrize("identifier", ["%2E%2E", "a..b", ".hidden", "a%2Fb", "a b", "x" * 200])
def test_a_bad_identifier_is_400(gateway, identifier):
    client, sink, _ = gateway
    answer = client.post(f"/upload/{identifier}", content=CSV, headers=AUTH)
    assert answer.status_code in (400, 404), answer.text  # a decoded '/' no longer matches the route
    assert not sink.events


def test_upload_and_download_need_the_token_status_does_not(gateway):
    client, sink, _ = gateway
    assert client.post("/upload/x", content=CSV).status_code == 401
    assert client.post("/upload/x", content=CSV, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/download/processed/x/a.parquet").status_code == 401
    assert client.get("/pipelines/x").status_code == 404  # open, and nothing known
    assert client.get("/").status_code == 200
    assert not sink.events


def test_event_token_is_the_default_and_no_token_means_open(file_store):
    sink = Sink()
    with_event_token = TestClient(create_app({"EVENT_TOKEN": "t"}, store=file_store, emit=sink))
    assert with_event_token.post("/upload/x", content=CSV).status_code == 401
    assert with_event_token.post("/upload/x", content=CSV, headers={"Authorization": "Bearer t"}).status_code == 202
    open_ = TestClient(create_app({}, store=file_store, emit=sink))
    assert open_.post("/upload/y", content=CSV).status_code == 202


def test_sink_down_is_503_with_retry_after_and_the_retry_emits_once(gateway):
    client, sink, store = gateway
    sink.down = True
    refused = client.post("/upload/x", content=CSV, headers=AUTH)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert not list(store.list_keys("raw-data", "x/uploads/"))
    sink.down = False
    retried = client.post("/upload/x", content=CSV, headers=AUTH)
    assert retried.status_code == 202 and not retried.json()["duplicate"]
    assert client.post("/upload/x", content=CSV, headers=AUTH).json()["duplicate"]
    assert len(sink.events) == 1


def test_download_validates_keys_and_404s_what_is_missing(gateway):
    client, _, store = gateway
    store.put_bytes("processed-data", "x/h/train.parquet", b"PAR1")
    ok = client.get("/download/processed/x/h/train.parquet", headers=AUTH)
    assert ok.status_code == 200 and ok.content == b"PAR1"
    assert client.get("/download/processed/x/h/nope.parquet", headers=AUTH).status_code == 404
    assert client.get("/download/processed/x/%2E%2E/secret", headers=AUTH).status_code == 400
    assert client.get("/download/processed/x//a", headers=AUTH).status_code == 400
    assert client.get("/download/other/x", headers=AUTH).status_code == 400
    assert client.get("/download/model/x", headers=AUTH).status_code == 404
    assert client.get("/download/pointer/..", headers=AUTH).status_code in (400, 404)


def test_champion_model_pointer_and_page(gateway):
    client, _, store = gateway
    pointer = {"identifier": "x", "config_hash": "h" * 16, "run_id": "r" * 32, "model_type": "LGBM",
               "experiment": "flts-x", "model_uri": "runs:/r/LGBM", "rmse": 1.0, "mae": 0.5, "mse": 1.0,
               "score": 0.7, "timestamp": "2026-01-01T00:00:00+00:00", "weights": {},
               "artifact_bucket": "model-promotion", "artifact_key": "x/h/artifacts/r/model.onnx"}
    put_json(store, "model-promotion", "x/current.json", pointer)
    store.put_bytes("model-promotion", pointer["artifact_key"], b"onnx")
    assert client.get("/download/model/x", headers=AUTH).content == b"onnx"
    assert client.get("/download/pointer/x", headers=AUTH).json()["run_id"] == pointer["run_id"]
    report = client.get("/pipelines/x").json()
    assert report["champion"]["model_type"] == "LGBM" and report["upload"] is None
    page = client.get("/").text
    assert "Champion: LGBM" in page and "/plot/x.png" in page and "<script" not in page
    assert client.get("/plot/x.png").status_code == 404  # MLflow unreachable here: no plot


def test_embedded_without_k_sink_the_upload_runs_the_pipeline_in_process(tmp_path, lte_dir):
    """No K_SINK: the gateway's own EmbeddedRouter takes the event (here preprocess only, for speed)."""
    import time

    from flts import routing
    from flts.storage import FileStore

    env = {"FLTS_OBJECT_DIR": str(tmp_path / "objects"), "MLFLOW_TRACKING_URI": str(tmp_path / "mlruns")}
    sink = gateway_emit.EmbeddedEmitter(env, [routing.deployment("preprocess")])
    client = TestClient(create_app(env, store=FileStore(tmp_path / "objects"), emit=sink))
    csv = (lte_dir / "PobleSec.csv").read_bytes()[:200_000]
    csv = csv[:csv.rfind(b"\n") + 1]
    assert client.post("/upload/PobleSec", content=csv).status_code == 202
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stages = {s["stage"]: s for s in client.get("/pipelines/PobleSec").json()["stages"]}
        if stages["preprocess"]["state"] == "done":
            break
        time.sleep(0.2)
    assert stages["preprocess"]["state"] == "done" and stages["preprocess"]["rows"] > 0
    assert [d.error for d in sink.router.deliveries] == [None]
    assert stages["train-gru"]["state"] == "waiting"  # no trainer in this router


def test_flts_upload_goes_through_the_gateway_when_it_answers(file_store, tmp_path, monkeypatch, capsys):
    """`flts upload` streams the test file, then the training file, and prints the status URL."""
    from flts import cli
    from flts.dev import stack
    from flts.dev.testing import running_server

    sink = Sink()
    train, test = tmp_path / "Shop.csv", tmp_path / "Shop_test.csv"
    train.write_bytes(CSV)
    test.write_bytes(CSV.replace(b"2018-01-01", b"2018-01-02"))
    with running_server(create_app({"GATEWAY_TOKEN": TOKEN}, store=file_store, emit=sink)) as url:
        monkeypatch.setattr(stack, "gateway_url", lambda cfg: url)
        monkeypatch.setattr(stack, "gateway_token", lambda cfg: TOKEN)
        assert cli.main(["upload", str(train), "--test", str(test), "--no-wait"]) == 0
        first = capsys.readouterr().out
        assert cli.main(["upload", str(train), "--test", str(test), "--no-wait"]) == 0
        again = capsys.readouterr().out
    assert f"status: {url}/pipelines/Shop" in first and "started: id=upload-" in first
    assert "already uploaded" in again
    (event,) = sink.events
    assert event.data["identifier"] == "Shop" and event.data["test_object_key"].startswith("Shop/test-")
