"""Property tests: whatever body arrives at /predict or the v2 infer route, the answer is
never a 5xx and the server keeps serving."""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flts.dev import testing
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, persistence_onnx, running_server
from flts.infer.app import create_app


def promote(store, model_bytes: bytes, **options):
    """testing.promote with the artifact where eval puts it: the promotion bucket, the only one infer loads from by default."""
    return testing.promote(store, model_bytes, **{"artifact_bucket": "model-promotion", **options})


def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # the stdlib writes integers of any size (orjson stops at 64 bits)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
                           max_leaves=40)
timestamps = st.datetimes().map(str) | st.text(max_size=25)
cell = st.floats(allow_nan=False, allow_infinity=False) | st.integers(min_value=-10**30, max_value=10**30) | json_scalars


@pytest.fixture(scope="module")
def server(tmp_path_factory, lte_dir):
    from flts.storage import FileStore

    store = FileStore(tmp_path_factory.mktemp("objects"))
    promote(store, persistence_onnx(10, len(LTE_FEATURES), 3, 0, factor=2.0))
    window = request_body(last_rows(lte_dir / "PobleSec_test.csv", 10), "time")
    with running_server(create_app({"FLTS_OBJECT_DIR": str(store.root), "MAX_BODY_BYTES": "65536"}, store)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client, window


def _check(client, path: str, body: bytes, window) -> None:
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (body[:300], r.text)
    if r.status_code >= 400:
        assert r.json().get("error"), r.text  # every refusal says why


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_random_json_never_5xx(server, body):
    client, window = server
    _check(client, "/predict", _dumps(body), window)
    _check(client, "/v2/models/PobleSec/infer", _dumps(body), window)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.sampled_from(["time", *LTE_FEATURES[:11], "index_col", "inference_length", "rows"]),
       row=st.integers(0, 12), value=cell, times=st.none() | st.lists(timestamps, min_size=0, max_size=14),
       extra=st.dictionaries(st.sampled_from(["identifier", "inference_length", "index_col"]), json_scalars, max_size=2))
def test_mutated_windows_never_5xx(server, column, row, value, times, extra):
    client, window = server
    data = {k: list(v) for k, v in window["data"].items()}
    if column in data and row < len(data[column]):
        data[column][row] = value
    elif column in data:
        data[column].append(value)
    if times is not None:
        data["time"] = times
    body = {"data": data, **extra}
    _check(client, "/predict", _dumps(body), window)
    rows = [{c: data[c][i] for c in data if i < len(data[c])} for i in range(len(data["time"]))]
    _check(client, "/predict", _dumps({"rows": rows, **extra}), window)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_5xx(server, raw):
    client, window = server
    _check(client, "/predict", raw, window)
    assert client.post("/predict", json=window).status_code == 200
