"""The inference function over real HTTP (uvicorn in a thread): contract, bad input,
backpressure, micro-batching, hot swap under load, scaling, v2 protocol, events."""
from __future__ import annotations

import asyncio
import io
import time
from datetime import datetime, timedelta

import httpx
import numpy as np
import orjson
import pytest
from cloudevents.conversion import to_binary

from flts import events
from flts.dev import testing
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, persistence_onnx, running_server
from flts.infer import prometheus as metrics
from flts.infer.app import create_app
from flts.infer.model import ModelError, load_model
from flts.infer.registry import ModelRegistry
from flts.infer.settings import ServingSettings
from flts.promotion import current_key
from flts.storage import put_json


def promote(store, model_bytes: bytes, **options):
    """testing.promote with the artifact where eval puts it: the promotion bucket, the only one infer loads from by default."""
    return testing.promote(store, model_bytes, **{"artifact_bucket": "model-promotion", **options})

L, M = 10, 3
TARGET_INDEX = LTE_FEATURES.index("down")


@pytest.fixture(scope="module")
def window(lte_dir):
    """12 real rows of the PobleSec test file, as /predict takes them."""
    return request_body(last_rows(lte_dir / "PobleSec_test.csv", 12), "time")


@pytest.fixture
def store(file_store):
    promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX, factor=2.0, bias=1000.0))
    return file_store


def env_for(store, **extra) -> dict:
    return {"FLTS_OBJECT_DIR": str(store.root), **{k: str(v) for k, v in extra.items()}}


class SlowPredictor:
    """A model that takes `seconds` per batch, to hold requests in flight."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds

    def check(self, spec):
        pass

    def predict(self, x, last_wall, step):
        time.sleep(self.seconds)
        return self.inner.predict(x, last_wall, step)


def slow_registry(store, seconds: float, **settings_env) -> ModelRegistry:
    settings = ServingSettings.from_env(settings_env)
    from flts.promotion import resolve_pointer

    model = load_model(store, resolve_pointer(store, "model-promotion"), settings)
    model.predictor = SlowPredictor(model.predictor, seconds)
    registry = ModelRegistry()
    registry.install_default(model)
    registry.install(model.info.identifier, model)
    return registry


def post_event(url: str, event_type: str, data) -> httpx.Response:
    headers, body = to_binary(events.make_event(event_type, "test", data))
    return httpx.post(url + "/", content=body, headers=headers, timeout=30)


def write_pointer(store, pointer, *keys: str) -> None:
    """Point `keys` (default: the identifier's current.json and current.json, as eval does) at `pointer`."""
    for key in keys or (current_key(pointer.identifier), current_key()):
        put_json(store, "model-promotion", key, pointer.model_dump(mode="json", exclude_none=True))


def announce(store, url: str, pointer) -> httpx.Response:
    """Promote as eval does: the pointers first, then the model-selected notice."""
    write_pointer(store, pointer)
    return post_event(url, events.MODEL_SELECTED, pointer)


# ---------------------------------------------------------------- the contract

def test_predict_contract(store, window):
    with running_server(create_app(env_for(store), store)) as url:
        r = httpx.post(url + "/predict", json=window)
        assert r.status_code == 200, r.text
        body = r.json()
        assert {k: body[k] for k in ("status", "identifier", "model_type", "run_id")} == {
            "status": "SUCCESS", "identifier": "PobleSec", "model_type": "GRU", "run_id": "run-1"}
        assert body["config_hash"].startswith("c0ffee")
        predictions = body["predictions"]
        assert len(predictions) == M
        last = datetime.fromisoformat(window["data"]["time"][-1])
        assert [p["ts"] for p in predictions] == [str(last + timedelta(minutes=2 * k)) for k in (1, 2, 3)]
        last_down = window["data"]["down"][-1]
        for k, p in enumerate(predictions, start=1):
            expected = np.float32(np.float32(2.0) * np.float32(last_down) + np.float32(1000.0 * k))
            assert p["down"] == pytest.approx(float(expected), rel=1e-6)

        rows = [{c: window["data"][c][i] for c in window["data"]} for i in range(12)]
        by_rows = httpx.post(url + "/predict", json={"rows": rows, "inference_length": 2})
        assert by_rows.status_code == 200, by_rows.text
        assert by_rows.json()["predictions"] == predictions[:2]


def test_time_features_match_preprocess(file_store, window):
    """The server computes minute/dow encodings from the timestamps exactly as preprocess does."""
    import pandas as pd

    from flts.preprocess.handler import add_time_features

    for name in ("minute_sin", "minute_cos", "dow_sin", "dow_cos"):
        promote(file_store, persistence_onnx(L, len(LTE_FEATURES), 1, LTE_FEATURES.index(name)), run_id=f"run-{name}",
                output_seq_len=1)
        with running_server(create_app(env_for(file_store), file_store)) as url:
            # an odd timestamp (Sunday 23:58) makes a wrong encoding visible
            data = dict(window["data"], time=[str(datetime(2018, 3, 4, 23, 58) - timedelta(minutes=2 * (11 - i))) for i in range(12)])
            value = httpx.post(url + "/predict", json={"data": data}).json()["predictions"][0]["down"]
        frame = add_time_features(pd.DataFrame({"time": pd.to_datetime(data["time"])}), "time")
        assert value == pytest.approx(float(frame[name].iloc[-1]), abs=1e-6), name


BAD_BODIES = [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"data": "nope"}', 400, "'data' must be an object"),
    (b'{"something": 1}', 400, "needs 'data'"),
]


def _mutated(window, **changes):
    data = {k: list(v) for k, v in window["data"].items()}
    for column, (row, value) in changes.items():
        data[column][row] = value
    return {"data": data}


def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(store, window):
    cases = [
        *BAD_BODIES,
        (orjson.dumps(_mutated(window, up=(3, "12"))), 400, "column 'up' row 3: expected a number, got str"),
        (orjson.dumps(_mutated(window, up=(3, None))), 400, "NaN/missing"),
        (orjson.dumps(_mutated(window, up=(3, True))), 400, "got bool"),
        (orjson.dumps(_mutated(window, up=(3, 1e300))), 400, "float32 range"),
        (orjson.dumps(_mutated(window, time=(5, "yesterday"))), 400, "not an ISO 8601 timestamp"),
        (orjson.dumps(_mutated(window, time=(5, window["data"]["time"][4]))), 400, "row 5 is duplicate"),
        (orjson.dumps(_mutated(window, time=(5, "2000-01-01 00:00:00"))), 400, "unsorted"),
        (orjson.dumps({"data": {k: v[:4] for k, v in window["data"].items()}}), 400,
         "4 rows are too few: the model needs at least 10 rows of history"),
        (orjson.dumps({"data": {k: v for k, v in window["data"].items() if k not in ("up", "rb_up")}}), 400,
         "missing columns ['up', 'rb_up']"),
        (orjson.dumps({**window, "inference_length": 99}), 400, "'inference_length' must be an integer from 1 to 3"),
        (orjson.dumps({**window, "identifier": "Nowhere"}), 404, "no champion is promoted for identifier 'Nowhere'"),
        (orjson.dumps({"data": dict(window["data"], up=[1.0])}), 400, "'up' has 1 values"),
        (b"x" * 5000, 413, "over the limit of 4096"),
    ]
    with running_server(create_app(env_for(store, MAX_BODY_BYTES=4096), store)) as url:
        with httpx.Client(base_url=url) as client:
            for body, status, message in cases:
                r = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == status, (body[:80], r.text)
                assert message in r.json()["error"], (message, r.text)
                assert client.post("/predict", json=window).status_code == 200  # still serving
            # Chunked (no Content-Length) bodies are counted as they stream in.
            r = client.post("/predict", content=iter([b"x" * 3000, b"x" * 3000]))
            assert r.status_code == 413
            assert client.get("/v2/models/Nowhere").status_code == 404
            assert "Nowhere" in client.get("/v2/models/Nowhere").json()["error"]


# ---------------------------------------------------------------- backpressure

async def _burst(url: str, body: dict, count: int, path: str = "/predict") -> list[tuple[int, float, dict]]:
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=count)) as client:
        async def one():
            t0 = time.perf_counter()
            r = await client.post(path, json=body)
            return r.status_code, time.perf_counter() - t0, dict(r.headers)
        return await asyncio.gather(*(one() for _ in range(count)))


def test_over_the_inflight_limit_answers_429_at_once(store, window):
    registry = slow_registry(store, 0.3)
    app = create_app(env_for(store, MAX_INFLIGHT=1), store, registry)
    with running_server(app) as url:
        results = asyncio.run(_burst(url, window, 6))
        statuses = sorted(s for s, _, _ in results)
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
        assert set(statuses) <= {200, 429}
        for status, seconds, headers in results:
            if status == 429:
                assert headers["retry-after"] == "1"
                assert seconds < 0.25  # answered without waiting for the slow model
        assert httpx.post(url + "/predict", json=window).status_code == 200


def test_queue_bound_and_ttl(store, window):
    # One lane, batches of one, a queue of one: the third concurrent request finds it full.
    registry = slow_registry(store, 0.2)
    app = create_app(env_for(store, QUEUE_MAXSIZE=1, ENABLE_MICROBATCH=0), store, registry)
    with running_server(app) as url:
        statuses = [s for s, _, _ in asyncio.run(_burst(url, window, 5))]
        assert statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
    # With a TTL shorter than the model's time, requests that waited behind a batch expire.
    registry = slow_registry(store, 0.2)
    app = create_app(env_for(store, ENABLE_TTL=1, REQUEST_TTL_MS=50, ENABLE_MICROBATCH=0), store, registry)
    with running_server(app) as url:
        results = asyncio.run(_burst(url, window, 4))
        assert [s for s, _, _ in results].count(429) >= 1, results
        text = httpx.get(url + "/metrics").text
        assert metrics.sample(text, "flts_infer_rejections_total", reason="ttl") >= 1


def test_microbatching_runs_concurrent_requests_together(store, window):
    registry = slow_registry(store, 0.1)
    app = create_app(env_for(store, BATCH_SIZE=16, BATCH_TIMEOUT_MS=20), store, registry)
    with running_server(app) as url:
        before = metrics.sample(httpx.get(url + "/metrics").text, "flts_infer_batch_size_count")
        results = asyncio.run(_burst(url, window, 12))
        assert all(s == 200 for s, _, _ in results)
        after = metrics.sample(httpx.get(url + "/metrics").text, "flts_infer_batch_size_count")
        assert after - before < 12  # fewer ONNX runs than requests


# ---------------------------------------------------------------- hot swap and scaling

def test_hot_swap_under_load_loses_no_request(file_store, window):
    store = file_store
    promote(store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX, factor=1.0), run_id="old")
    new = promote(store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX, factor=3.0), run_id="new",
                  write_pointer=False)
    missing = new.model_copy(update={"run_id": "gone", "artifact_key": "models/PobleSec/gone/model.onnx"})
    with running_server(create_app(env_for(store), store)) as url:
        async def scenario():
            stop = asyncio.Event()
            seen: list[tuple[int, str]] = []

            async def client_loop():
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    while not stop.is_set():
                        r = await client.post("/predict", json=window)
                        seen.append((r.status_code, r.json().get("run_id")))

            loops = [asyncio.create_task(client_loop()) for _ in range(8)]
            await asyncio.sleep(0.3)
            refused = await asyncio.to_thread(announce, store, url, missing)
            swapped = await asyncio.to_thread(announce, store, url, new)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*loops)
            return refused, swapped, seen

        refused, swapped, seen = asyncio.run(scenario())
        assert refused.status_code == 422 and "not found" in refused.json()["error"]
        assert swapped.status_code == 202, swapped.text
        assert len(seen) > 50
        assert {status for status, _ in seen} == {200}  # zero failed requests across both events
        runs = [run for _, run in seen]
        assert runs[0] == "old" and runs[-1] == "new"
        assert runs.index("new") > 0 and "old" not in runs[runs.index("new") + 8:]  # only in-flight ones after
        # A redelivery of the same event changes nothing.
        assert post_event(url, events.MODEL_SELECTED, new).status_code == 202
        assert httpx.post(url + "/predict", json=window).json()["run_id"] == "new"
        text = httpx.get(url + "/metrics").text
        assert metrics.sample(text, "flts_infer_model_info", run_id="new") == 1
        assert metrics.sample(text, "flts_infer_model_info", run_id="old") == 0


def test_scale_workers_needs_the_token_and_keeps_in_flight_requests(store, window):
    registry = slow_registry(store, 0.3)
    app = create_app(env_for(store, SCALE_WORKERS_TOKEN="s3cret", MAX_WORKERS=3, ENABLE_MICROBATCH=0), store, registry)
    with running_server(app) as url:
        assert httpx.post(url + "/scale_workers", json={"workers": 2}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(url + "/scale_workers", json={"workers": 9}, headers=auth).status_code == 400
        up = httpx.post(url + "/scale_workers", json={"workers": 3}, headers=auth)
        assert up.json() == {"workers": 3, "previous": 1, "max_workers": 3}

        async def scenario():
            burst = asyncio.create_task(_burst(url, window, 3))
            await asyncio.sleep(0.1)  # three batches are running on three lanes
            async with httpx.AsyncClient(base_url=url) as client:
                down = await client.post("/scale_workers", json={"workers": 1}, headers=auth)
            return down, await burst

        down, results = asyncio.run(scenario())
        assert down.json()["previous"] == 3
        assert [s for s, _, _ in results] == [200, 200, 200]
        assert httpx.get(url + "/readyz").json()["workers"] == 1
        assert httpx.post(url + "/predict", json=window).status_code == 200


# ---------------------------------------------------------------- operations and v2

def test_health_readiness_and_metrics(file_store, window):
    with running_server(create_app(env_for(file_store), file_store)) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        nothing = httpx.get(url + "/readyz")  # ready to take events: the first model-selected must reach it
        assert nothing.status_code == 200 and nothing.json()["model"] is None
        assert httpx.post(url + "/predict", json=window).status_code == 503
        pointer = promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX))
        assert post_event(url, events.MODEL_SELECTED, pointer).status_code == 202
        served = httpx.get(url + "/readyz").json()["model"]
        assert served["run_id"] == "run-1" and (served["history_rows"], served["horizon"]) == (L, M)
        assert httpx.post(url + "/predict", json=window).status_code == 200
        text = httpx.get(url + "/metrics").text
        for family in ("flts_infer_requests_total", "flts_infer_request_seconds_bucket", "flts_infer_inflight",
                       "flts_infer_queue_depth", "flts_infer_batch_size_bucket", "flts_infer_model_info",
                       "flts_infer_cold_start_seconds", "flts_infer_workers"):
            assert family in text, family
        assert metrics.sample(text, "flts_infer_requests_total", route="predict", status="503") >= 1


def test_open_inference_protocol_v2_with_tritonclient(store, window):
    import tritonclient.http as triton

    with running_server(create_app(env_for(store), store)) as url:
        client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("PobleSec") and not client.is_model_ready("Nowhere")
        meta = client.get_model_metadata("PobleSec")
        assert meta["inputs"][0]["shape"] == [-1, L, len(LTE_FEATURES)]
        x = np.random.default_rng(0).uniform(0, 100, (4, L, len(LTE_FEATURES))).astype(np.float32)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        result = client.infer("PobleSec", [tensor], outputs=[triton.InferRequestedOutput("forecast", binary_data=False)])
        forecast = result.as_numpy("forecast")
        expected = 2.0 * x[:, -1, TARGET_INDEX][:, None] + 1000.0 * np.arange(1, M + 1)
        np.testing.assert_allclose(forecast, expected, rtol=1e-5)
        with pytest.raises(triton.InferenceServerException, match="no champion is promoted for identifier 'Nowhere'"):
            client.infer("Nowhere", [tensor])
        client.close()


# ---------------------------------------------------------------- inference-data events

def test_inference_data_event_writes_new_objects_once(store, lte_dir):
    import pyarrow.parquet as pq

    from flts.preprocess.handler import PreprocessSettings, preprocess

    raw = (lte_dir / "ElBorn_test.csv").read_bytes()
    store.ensure_bucket("raw-data")
    store.put_bytes("raw-data", "ElBorn/ElBorn.csv", raw[: raw.index(b"\n", 40_000) + 1])
    meta = preprocess(store, events.DatasetReady(bucket="raw-data", object_key="ElBorn/ElBorn.csv", identifier="ElBorn"),
                      PreprocessSettings())
    claim = events.DataClaim(bucket="processed-data", object_key=meta["objects"]["train"],
                             test_object_key=meta["objects"]["test"], config_hash=meta["config_hash"], identifier="ElBorn")
    with running_server(create_app(env_for(store), store)) as url:
        assert post_event(url, events.INFERENCE_DATA, claim).status_code == 202
        prefix = f"ElBorn/{meta['config_hash']}/run-1"
        keys = sorted(store.list_keys("inference-logs"))
        assert keys == [f"{prefix}/forecasts.parquet", f"{prefix}/metrics.json"]
        summary = orjson.loads(store.get_bytes("inference-logs", f"{prefix}/metrics.json"))
        windows = meta["test_row_count"] - L - M + 1
        assert summary["windows"] == windows and summary["metrics"]["rmse_orig"] > 0
        table = pq.read_table(io.BytesIO(store.get_bytes("inference-logs", f"{prefix}/forecasts.parquet")))
        assert table.num_rows == windows * M
        test_down = pq.read_table(io.BytesIO(store.get_bytes("processed-data", meta["objects"]["test"])))["down"]
        expected = 2.0 * np.float32(test_down[L - 1].as_py()) + 1000.0 * np.arange(1, M + 1)
        np.testing.assert_allclose(table["forecast"].to_numpy()[:M], expected, rtol=1e-6)
        assert table["actual"].to_numpy()[0] == np.float32(test_down[L].as_py())
        mtime = (store.root / "inference-logs" / prefix / "metrics.json").stat().st_mtime_ns
        assert post_event(url, events.INFERENCE_DATA, claim).status_code == 202  # redelivery: skipped
        assert (store.root / "inference-logs" / prefix / "metrics.json").stat().st_mtime_ns == mtime
        bad = claim.model_copy(update={"test_object_key": "ElBorn/none.parquet"})
        assert post_event(url, events.INFERENCE_DATA, bad.model_copy(update={"config_hash": "f" * 16})).status_code == 422
        assert httpx.get(url + "/readyz").status_code == 200


def test_embedded_handler_loads_or_refuses(store):
    from flts.infer import handler as serving_events
    from flts.storage import ObjectNotFound

    pointer = promote(store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX), run_id="embedded")
    env = env_for(store)
    assert serving_events.handle(events.make_event(events.MODEL_SELECTED, "eval", pointer), env) == []
    registry = serving_events.process_registry(ServingSettings.from_env(env))
    assert registry.get("PobleSec").info.run_id == "embedded"
    gone = pointer.model_copy(update={"run_id": "gone", "artifact_key": "models/x/model.onnx"})
    write_pointer(store, gone)
    with pytest.raises(ObjectNotFound):
        serving_events.handle(events.make_event(events.MODEL_SELECTED, "eval", gone), env)
    assert registry.get("PobleSec").info.run_id == "embedded"  # still serving the loaded one


def test_prophet_model_is_served_by_the_lazy_path(file_store, window):
    import pandas as pd
    from prophet import Prophet
    from prophet.serialize import model_to_json

    history = pd.DataFrame({"ds": pd.date_range("2018-03-01", periods=120, freq="2min")})
    history["y"] = 1000.0 + 10.0 * np.sin(np.arange(120) / 7.0)
    model = Prophet(daily_seasonality=False, weekly_seasonality=False, yearly_seasonality=False).fit(history)
    promote(file_store, model_to_json(model).encode(), artifact_format="prophet-json", model_type="PROPHET",
            feature_columns=(), run_id="prophet-1")
    with running_server(create_app(env_for(file_store), file_store)) as url:
        r = httpx.post(url + "/predict", json={"data": {"time": window["data"]["time"]}})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
    model.uncertainty_samples = 0
    expected = model.predict(pd.DataFrame({"ds": pd.to_datetime([p["ts"] for p in predictions])}))["yhat"]
    np.testing.assert_allclose([p["down"] for p in predictions], expected, rtol=1e-5)


def test_registry_holds_the_pinned_default_and_at_most_max_models_identifiers_lru(store):
    from flts.infer import handler as serving_events

    settings = ServingSettings.from_env({"MODEL_IDENTIFIER": "PobleSec", "MAX_MODELS": "3"})
    registry = ModelRegistry(settings.max_models)
    onnx = persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX)
    for identifier in ("PobleSec", "ElBorn", "Other", "Fourth"):  # current.json ends on Fourth's promotion
        pointer = promote(store, onnx, identifier=identifier, run_id=f"run-{identifier}")
        if identifier != "Fourth":
            assert serving_events.on_model_selected(store, pointer, settings, registry)["status"] == "swapped"
    assert registry.default.info.identifier == "PobleSec"  # MODEL_IDENTIFIER pins the default
    assert registry.names() == ["ElBorn", "Other", "PobleSec"]
    assert serving_events.on_model_selected(store, pointer.model_copy(update={"identifier": "Other"}), settings,
                                            registry)["status"] == "skipped"  # served already
    registry.cached("ElBorn")  # a request: ElBorn is now used more recently than Other
    serving_events.load_champion(store, settings, registry, "Fourth")
    assert registry.names() == ["ElBorn", "Fourth", "PobleSec"]  # the least recently used left, never the default


# ---------------------------------------------------------------- prediction intervals
def v2_outputs(url: str, x: np.ndarray) -> dict[str, dict]:
    """The v2 route's outputs for the FP32 tensor x [batch, L, F], by name."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return {o["name"]: o for o in httpx.post(url + "/v2/models/PobleSec/infer", json=body).json()["outputs"]}


def test_predict_and_v2_return_the_pointers_conformal_bounds_per_level(file_store, window):
    half_widths = [[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]
    promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX),
            intervals={"levels": [0.8, 0.95], "half_widths": half_widths})
    with running_server(create_app(env_for(file_store), file_store)) as url:
        assert httpx.get(url + "/readyz").json()["model"]["interval_levels"] == [0.8, 0.95]
        predictions = httpx.post(url + "/predict", json=window).json()["predictions"]
        for step, p in enumerate(predictions):
            assert p["lower_80"] == pytest.approx(p["down"] - half_widths[0][step])
            assert p["upper_95"] == pytest.approx(p["down"] + half_widths[1][step])
        x = np.zeros((2, L, len(LTE_FEATURES)), np.float32)
        outputs = v2_outputs(url, x)
        assert sorted(outputs) == ["forecast", "forecast_lower_80", "forecast_lower_95", "forecast_upper_80",
                                   "forecast_upper_95"]
        forecast, upper = np.array(outputs["forecast"]["data"]), np.array(outputs["forecast_upper_95"]["data"])
        np.testing.assert_allclose(upper - forecast, np.tile(half_widths[1], 2), rtol=1e-5)
        metadata = httpx.get(url + "/v2/models/PobleSec").json()
        assert [o["name"] for o in metadata["outputs"]] == list(outputs)


def assert_history_rows(url: str, lte_dir, rows: int) -> None:
    """/readyz states `rows` of history, and a request with one fewer gets the 400 that names them."""
    assert httpx.get(url + "/readyz").json()["model"]["history_rows"] == rows
    refused = httpx.post(url + "/predict", json=request_body(last_rows(lte_dir / "PobleSec_test.csv", rows - 1), "time"))
    assert refused.status_code == 400 and f"at least {rows} rows of history" in refused.json()["error"]


def test_scaled_intervals_need_their_history_and_follow_its_recent_change(file_store, lte_dir):
    """scale_rows = 11: a request sends 12 rows (more than the model's 10), the half-widths multiply the
    mean |one-step change| of those 12 target values, or of the last 3 changes when that is larger
    (short_scale_rows = 3); v2 scales each window by the rows it holds."""
    from flts.intervals import recent_change

    half_widths = [[1.0, 2.0, 3.0]]
    promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX),
            intervals={"levels": [0.9], "half_widths": half_widths, "scale_rows": 11, "short_scale_rows": 3})
    body = request_body(last_rows(lte_dir / "PobleSec_test.csv", 12), "time")
    with running_server(create_app(env_for(file_store), file_store)) as url:
        assert_history_rows(url, lte_dir, 12)
        scale = recent_change(np.array(body["data"]["down"], np.float64), 3)
        for step, p in enumerate(httpx.post(url + "/predict", json=body).json()["predictions"]):
            assert p["upper_90"] - p["down"] == pytest.approx(half_widths[0][step] * scale, rel=1e-5)
        x = np.zeros((2, L, len(LTE_FEATURES)), np.float32)
        x[1, :, TARGET_INDEX] = np.cumsum(np.r_[0.0, np.ones(L - 4), np.full(3, 10.0)])  # a burst at the end
        outputs = v2_outputs(url, x)
        width = (np.array(outputs["forecast_upper_90"]["data"]) - np.array(outputs["forecast"]["data"])).reshape(2, M)
        np.testing.assert_allclose(width[1], np.array(half_widths[0]) * 10.0, rtol=1e-5)  # the last 3 changes
        assert np.all(width[0] < 1e-6)  # a flat window: the floor keeps the width positive but tiny


def test_seasonal_intervals_need_a_day_of_history_and_scale_each_step_by_its_time_of_day(file_store, lte_dir):
    """season_rows = 12 (a 'day' of 12 rows), ±1 row, up to 2 days: a request needs 14 rows (step 0's
    day back reaches the change into row 14 before the origin) and each step's half-width multiplies
    flts.intervals.seasonal_change of the target it sends; v2's 10-row tensor holds no day, so every
    step takes the tensor's mean change."""
    from flts.intervals import seasonal_change

    half_widths = [[1.0, 2.0, 3.0]]
    promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX),
            intervals={"levels": [0.9], "half_widths": half_widths, "season_rows": 12, "season_days": 2,
                       "season_width": 1})
    body = request_body(last_rows(lte_dir / "PobleSec_test.csv", 40), "time")
    with running_server(create_app(env_for(file_store), file_store)) as url:
        assert_history_rows(url, lte_dir, 14)
        scales = seasonal_change(np.array(body["data"]["down"], np.float64), M, 12, 2, 1)
        assert len(set(np.round(scales, 6))) == M  # each step its own scale
        widths = [p["upper_90"] - p["down"] for p in httpx.post(url + "/predict", json=body).json()["predictions"]]
        np.testing.assert_allclose(widths, np.array(half_widths[0]) * scales, rtol=1e-5)
        x = np.zeros((1, L, len(LTE_FEATURES)), np.float32)
        x[0, :, TARGET_INDEX] = np.arange(L) ** 2  # changes 1, 3, ..., 17: their mean is 9
        outputs = v2_outputs(url, x)
        width = np.array(outputs["forecast_upper_90"]["data"]) - np.array(outputs["forecast"]["data"])
        np.testing.assert_allclose(width, np.array(half_widths[0]) * 9.0, rtol=1e-5)


def test_intervals_for_another_horizon_are_refused_naming_both(file_store):
    pointer = promote(file_store, persistence_onnx(L, len(LTE_FEATURES), M, TARGET_INDEX),
                      intervals={"levels": [0.9], "half_widths": [[1.0, 2.0]]})
    with pytest.raises(ModelError, match="intervals cover 2 steps, the model forecasts 3"):
        load_model(file_store, pointer, ServingSettings())
