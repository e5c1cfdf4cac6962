"""The v2 infer route's fast path (issue 13): the binary tensor data extension, the JSON tensor
checks, the per-batch finiteness check, and the body deadline without asyncio.timeout."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest

from flts.dev import testing
from flts.dev.testing import LTE_FEATURES, persistence_onnx, running_server
from flts.infer.admission import read_body
from flts.infer.app import create_app
from flts.infer.features import RequestError

L, M = 10, 3
F = len(LTE_FEATURES)
TARGET_INDEX = LTE_FEATURES.index("down")
PATH = "/v2/models/PobleSec/infer"


@pytest.fixture
def url(file_store):
    testing.promote(file_store, persistence_onnx(L, F, M, TARGET_INDEX, factor=2.0, bias=1000.0),
                    artifact_bucket="model-promotion")
    with running_server(create_app({"FLTS_OBJECT_DIR": str(file_store.root)}, file_store)) as base:
        yield base


def _window(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 100, (batch, L, F)).astype(np.float32)


def _expected(x: np.ndarray) -> np.ndarray:
    return 2.0 * x[:, -1, TARGET_INDEX][:, None] + 1000.0 * np.arange(1, M + 1)


def _binary_request(x: np.ndarray, **request) -> tuple[bytes, dict]:
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                       "parameters": {"binary_data_size": x.nbytes}}], **request})
    return header + x.astype("<f4").tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_tritonclient_binary_tensors_in_and_out(url):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    x = _window(4)
    for binary_in, binary_out in ((True, True), (True, False), (False, True)):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary_in)
        result = client.infer("PobleSec", [tensor], outputs=[triton.InferRequestedOutput("forecast", binary_data=binary_out)])
        np.testing.assert_allclose(result.as_numpy("forecast"), _expected(x), rtol=1e-5)
    client.close()


def test_binary_data_output_answers_every_output_after_the_json_header(url):
    x = _window(2)
    body, headers = _binary_request(x, id="a1", parameters={"binary_data_output": True})
    r = httpx.post(url + PATH, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    header = orjson.loads(r.content[:length])
    assert header["id"] == "a1"
    (output,) = header["outputs"]
    assert output["name"] == "forecast" and "data" not in output
    assert output["parameters"]["binary_data_size"] == len(r.content) - length == 2 * M * 4
    np.testing.assert_allclose(np.frombuffer(r.content[length:], "<f4").reshape(2, M), _expected(x), rtol=1e-5)


def test_malformed_binary_requests_are_400_naming_the_problem(url):
    x = _window(1)
    body, headers = _binary_request(x)
    split = int(headers["Inference-Header-Content-Length"])
    nan = x.copy()
    nan[0, 3, 2] = np.nan
    nan_body, _ = _binary_request(nan)
    json_only = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                          "data": x.ravel().tolist()}]})
    cases = [
        (body[:-4], headers, "must be 600 bytes"),                                 # a value short
        (body + b"\0\0\0\0", headers, "must be 600 bytes"),                        # a value too many
        (body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "within the body"),
        (body, {"Inference-Header-Content-Length": "x1"}, "must be a byte count"),
        (body, {"Inference-Header-Content-Length": str(split - 1)}, "malformed JSON"),
        (nan_body, headers, "NaN or infinity"),
        (json_only + b"\0\0\0\0", {"Inference-Header-Content-Length": str(len(json_only))}, "declares no 'binary_data_size'"),
    ]
    for content, extra, message in cases:
        r = httpx.post(url + PATH, content=content, headers=extra)
        assert r.status_code == 400 and message in r.json()["error"], (message, r.text)
    assert httpx.post(url + PATH, content=body, headers=headers).status_code == 200


def test_json_tensors_nested_out_of_range_and_typed(url):
    x = _window(2)

    def post(data, shape=(2, L, F)):
        return httpx.post(url + PATH, json={"inputs": [{"name": "input", "datatype": "FP32", "shape": list(shape),
                                                        "data": data}]})

    flat, nested = post(x.ravel().tolist()), post(x.tolist())
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["outputs"] == nested.json()["outputs"]
    np.testing.assert_allclose(np.array(flat.json()["outputs"][0]["data"]).reshape(2, M), _expected(x), rtol=1e-5)
    data = x.ravel().tolist()
    for value, message in ((1e39, "float32 range"), (-1e39, "float32 range"), (True, "only numbers"),
                           (None, "only numbers"), ("1.5", "only numbers")):
        r = post(data[:5] + [value] + data[6:])
        assert r.status_code == 400 and message in r.json()["error"], (value, r.text)
    assert post(data[:-1]).status_code == 400
    assert post([int(v) for v in data]).status_code == 200  # integers are numbers


def test_a_non_finite_forecast_is_422_for_its_request_only(url):
    """Finiteness is checked once per batch; a failing batch is checked per request, so the
    request whose values overflow the model's float32 output gets 422 and the others 200."""
    x = _window(1)
    huge = x.copy()
    huge[0, -1, TARGET_INDEX] = 3e38  # 2 * 3e38 overflows float32

    async def scenario():
        async with httpx.AsyncClient(base_url=url) as client:
            bodies = [huge if i == 3 else x for i in range(8)]
            return await asyncio.gather(*(client.post(PATH, json={"inputs": [{
                "name": "input", "datatype": "FP32", "shape": [1, L, F], "data": b.ravel().tolist()}]})
                for b in bodies))

    answers = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    assert "non-finite forecast" in answers[3].json()["error"]


# ---------------------------------------------------------------- the body deadline

def _chunks(*parts, delay: float = 0.0):
    queue = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]

    async def receive():
        await asyncio.sleep(delay)
        return queue.pop(0)
    return receive


async def _stall():
    await asyncio.sleep(3600)


_SCOPE = {"type": "http", "headers": []}


def test_read_body_within_the_deadline_leaves_no_cancel_behind():
    async def scenario():
        body = await read_body(_SCOPE, _chunks(b"ab", b"cd", b"e", delay=0.02), 100, "MAX", 0.2)
        await asyncio.sleep(0.3)  # past the deadline: the cancelled timer must not fire
        return body
    assert asyncio.run(scenario()) == b"abcde"


def test_read_body_past_the_deadline_is_408_and_other_cancels_propagate():
    with pytest.raises(RequestError, match=r"within 0.1 s \(BODY_READ_SECONDS\)") as refused:
        asyncio.run(read_body(_SCOPE, _stall, 100, "MAX", 0.1))
    assert refused.value.status == 408

    async def shutdown():
        task = asyncio.create_task(read_body(_SCOPE, _stall, 100, "MAX", 5.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()
    assert asyncio.run(shutdown())


def test_read_body_over_the_limit_while_streaming_is_413():
    with pytest.raises(RequestError, match="over the limit of 3 bytes") as refused:
        asyncio.run(read_body(_SCOPE, _chunks(b"ab", b"cd"), 3, "MAX", 1.0))
    assert refused.value.status == 413


def test_fp32_packer_matches_numpy():
    from flts.infer.v2 import _fp32

    values = [0.1, -2.5e38, 3, 1e-40, 123456.789]
    np.testing.assert_array_equal(_fp32(values, [1, 1, 5]).ravel(), np.array(values, np.float32))
