"""Issue 13: infer serves a fleet. A named identifier's champion is loaded on its first
request and held in an LRU bounded by MAX_MODELS and MAX_MODEL_BYTES (the default always
resident, not counted); a model larger than MAX_MODEL_BYTES is refused before it is loaded.
And the fast path: a lone one-window request of a fast model runs inline on the event loop."""
from __future__ import annotations

import threading

import httpx
import pytest

from flts.dev import testing
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, persistence_onnx, running_server
from flts.infer import handler as serving_events
from flts.infer.app import create_app
from flts.infer.model import ModelTooLarge
from flts.infer.registry import ModelRegistry
from flts.infer.settings import ServingSettings

L, M = 10, 3
ONNX = persistence_onnx(L, len(LTE_FEATURES), M, LTE_FEATURES.index("down"))
SIZE = len(ONNX)


def promote(store, identifier: str, model: bytes = ONNX, **options):
    return testing.promote(store, model, identifier=identifier, run_id=f"run-{identifier}",
                           artifact_bucket="model-promotion", **options)


@pytest.fixture(scope="module")
def window(lte_dir):
    return request_body(last_rows(lte_dir / "PobleSec_test.csv", 12), "time")


def test_lru_by_bytes_drops_the_least_recently_used_never_the_default(file_store):
    for identifier in ("A", "B", "C", "Default"):  # current.json ends on Default's champion
        promote(file_store, identifier)
    # Room for two artifacts besides the default, which is not counted.
    settings = ServingSettings.from_env({"MAX_MODEL_BYTES": str(2 * SIZE + SIZE // 2)})
    registry = ModelRegistry(settings.max_models, settings.max_model_bytes)
    serving_events.refresh_default(file_store, settings, registry)
    serving_events.load_champion(file_store, settings, registry, "Default")  # the default named: held, not counted
    for identifier in ("A", "B"):
        serving_events.load_champion(file_store, settings, registry, identifier)
    assert registry.names() == ["A", "B", "Default"] and registry.held_bytes == 2 * SIZE
    registry.cached("A")  # a request: A is now used more recently than B
    serving_events.load_champion(file_store, settings, registry, "C")
    assert registry.names() == ["A", "C", "Default"]  # B, the least recently used, went; never the default
    assert registry.held_bytes == 2 * SIZE and registry.default.info.identifier == "Default"


def test_a_model_over_max_model_bytes_is_refused_naming_it_and_not_loaded(file_store, window):
    promote(file_store, "Big", persistence_onnx(L, len(LTE_FEATURES), 60, 0), output_seq_len=60)  # more weights
    big = len(file_store.get_bytes("model-promotion", "models/Big/run-Big/model.onnx"))
    promote(file_store, "PobleSec")
    limit = big - 1
    assert SIZE <= limit  # the default fits
    with running_server(create_app({"FLTS_OBJECT_DIR": str(file_store.root), "MAX_MODEL_BYTES": str(limit)},
                                   file_store)) as url:
        answer = httpx.post(url + "/predict", json={**window, "identifier": "Big"})
        assert answer.status_code == 503, answer.text
        message = answer.json()["error"]
        assert "'Big'" in message and f"{big:,} bytes" in message and f"MAX_MODEL_BYTES={limit:,}" in message
        assert "not loaded" in message
        v2 = httpx.get(url + "/v2/models/Big")
        assert v2.status_code == 503 and "MAX_MODEL_BYTES" in v2.json()["error"]
        assert httpx.get(url + "/readyz").json()["served"] == []  # nothing was loaded for it
        missing = httpx.post(url + "/predict", json={**window, "identifier": "Nowhere"})
        assert missing.status_code == 404
        assert "no champion is promoted for identifier 'Nowhere'" in missing.json()["error"]
        assert httpx.post(url + "/predict", json=window).status_code == 200  # the default serves on
    # The embedded handler (a model-selected event) refuses it the same way.
    settings = ServingSettings.from_env({"MAX_MODEL_BYTES": str(limit)})
    with pytest.raises(ModelTooLarge, match=f"'Big'.*{big:,} bytes.*MAX_MODEL_BYTES={limit:,}"):
        serving_events.load_champion(file_store, settings, ModelRegistry(), "Big")


def test_a_fleet_of_identifiers_each_loaded_on_first_request_and_bounded(file_store, window):
    identifiers = [f"cell-{i:02d}" for i in range(12)]
    for identifier in identifiers:
        promote(file_store, identifier)
    env = {"FLTS_OBJECT_DIR": str(file_store.root), "MAX_MODELS": "8"}
    with running_server(create_app(env, file_store)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/readyz").json()["served"] == []
        for identifier in identifiers:
            answer = client.post("/predict", json={**window, "identifier": identifier})
            assert answer.status_code == 200 and answer.json()["identifier"] == identifier
        ready = client.get("/readyz").json()
        assert ready["served"] == identifiers[-8:]  # the 4 least recently used were dropped
        assert ready["served_bytes"] == 7 * SIZE  # cell-11 is the default: not counted


class ThreadRecorder:
    """Wraps a predictor, recording the thread of every run."""

    def __init__(self, inner):
        self.inner, self.threads = inner, []

    def check(self, spec):
        pass

    def predict(self, x, last_wall, step):
        self.threads.append(threading.current_thread().name)
        return self.inner.predict(x, last_wall, step)


@pytest.mark.parametrize("inline_ms, inline", [("50", True), ("0", False)])
def test_a_lone_request_of_a_fast_model_runs_inline(file_store, window, inline_ms, inline):
    promote(file_store, "PobleSec")
    app = create_app({"FLTS_OBJECT_DIR": str(file_store.root), "INLINE_RUN_MS": inline_ms}, file_store)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        model = app.state.service.registry.default
        recorder = model.predictor = ThreadRecorder(model.predictor)
        model.window_seconds = None  # the predictor was swapped after load: not timed yet
        for _ in range(5):
            assert client.post("/predict", json=window).status_code == 200
    first, rest = recorder.threads[0], recorder.threads[1:]
    assert first.startswith("infer")  # not timed yet: a lane's thread
    if inline:  # then timed fast: on the event loop's thread (uvicorn's, in this test)
        assert all(name.startswith("uvicorn") for name in rest), recorder.threads
    else:
        assert all(name.startswith("infer") for name in rest), recorder.threads
