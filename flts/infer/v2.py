"""Open Inference Protocol v2 (KServe / Triton REST) over the served model.

This is the tensor-level API: the client sends the model input exactly as the ONNX graph
takes it ("input", FP32, [batch, input_seq_len, n_features], raw values, time features
included) and gets "forecast" [batch, output_seq_len] back. JSON tensors only
(tritonclient's binary_data=False).
"""
from __future__ import annotations

import numpy as np
import orjson

from flts import forecasters
from flts.forecasters.onnx import INPUT_NAME, OUTPUT_NAME
from flts.infer.features import RequestError, with_intervals
from flts.infer.model import ServedModel

_NUMBER_TYPES, _INT = {int, float}, {int}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def model_metadata(model: ServedModel) -> dict:
    spec = model.spec
    return {
        "name": model.info.identifier,
        "versions": [model.info.run_id],
        "platform": forecasters.artifact_format(model.info.artifact_format).platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32",
                    "shape": [-1, spec.input_seq_len, len(spec.feature_columns)]}],
        "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, spec.output_seq_len]}
                    for name in (OUTPUT_NAME, *_bound_names(spec))],
        "parameters": {"feature_columns": list(spec.feature_columns), "target": spec.target,
                       "model_type": model.info.model_type, "config_hash": model.info.config_hash},
    }


def parse_infer(body, model: ServedModel, max_rows: int) -> tuple[np.ndarray, str | None]:
    """The infer request → (x [batch, L, F] float32, request id)."""
    if not isinstance(body, dict):
        raise RequestError("the v2 infer body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(f"'inputs' must be a list with one tensor named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise RequestError(f"unknown input {str(tensor.get('name'))[:50]!r}; the model takes {INPUT_NAME!r}")
    if tensor.get("datatype") != "FP32":
        raise RequestError(f"input datatype must be 'FP32', got {str(tensor.get('datatype'))[:20]!r}")
    spec = model.spec
    shape = tensor.get("shape")
    expected = [spec.input_seq_len, len(spec.feature_columns)]
    if (not isinstance(shape, list) or len(shape) != 3 or set(map(type, shape)) != _INT
            or shape[1:] != expected or not 1 <= shape[0] <= max_rows):
        raise RequestError(f"input shape must be [batch, {expected[0]}, {expected[1]}] with 1 <= batch <= {max_rows}, "
                           f"got {str(shape)[:60]}")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(f"'data' must hold {shape[0] * shape[1] * shape[2]} numbers (row-major)")
    types = set(map(type, data))  # one pass in C: a generator per value would cost more than the model
    if list in types:
        data = _flatten(data)  # nested (row-major) lists are allowed by the protocol
        types = set(map(type, data))
    if len(data) != shape[0] * shape[1] * shape[2]:
        raise RequestError(f"'data' must hold {shape[0] * shape[1] * shape[2]} numbers (row-major)")
    if not types <= _NUMBER_TYPES:
        raise RequestError("'data' must hold only numbers (no null, NaN, strings or booleans)")
    x = np.asarray(data, dtype=np.float64)
    if not (np.abs(x) <= _FLOAT32_MAX).all():
        raise RequestError("'data' holds a value out of the float32 range")
    request_id = body.get("id")
    return x.astype(np.float32).reshape(shape), request_id if isinstance(request_id, str) else None


def _flatten(data: list, depth: int = 0) -> list:
    if depth > 3:
        raise RequestError("'data' is nested deeper than the tensor's rank")
    out = []
    for value in data:
        if isinstance(value, list):
            out.extend(_flatten(value, depth + 1))
        else:
            out.append(value)
    return out


def _bound_names(spec) -> list[str]:
    """forecast_lower_80, forecast_upper_80, ...: the interval bounds, one pair per level."""
    return [f"{OUTPUT_NAME}_{name}" for name in with_intervals(np.zeros((1, spec.output_seq_len)), spec)]


def infer_response(model: ServedModel, forecast: np.ndarray, request_id: str | None,
                   scale: np.ndarray | float = 1.0) -> bytes:
    """The infer answer as JSON bytes (orjson writes the float32 arrays itself: no Python floats);
    `scale`: each window's interval scale (flts.infer.features.interval_scales)."""
    tensors = {OUTPUT_NAME: forecast, **{f"{OUTPUT_NAME}_{name}": bound
                                         for name, bound in with_intervals(forecast, model.spec, scale).items()}}
    response = {
        "model_name": model.info.identifier,
        "model_version": model.info.run_id,
        "outputs": [{"name": name, "datatype": "FP32", "shape": list(tensor.shape),
                     "data": np.ascontiguousarray(tensor, dtype=np.float32).ravel()}
                    for name, tensor in tensors.items()],
    }
    if request_id is not None:
        response["id"] = request_id
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
