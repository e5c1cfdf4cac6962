"""Open Inference Protocol v2 (KServe / Triton REST) over the served model.

This is the tensor-level API: the client sends the model input exactly as the ONNX graph
takes it ("input", FP32, [batch, input_seq_len, n_features], raw values, time features
included) and gets "forecast" [batch, output_seq_len] back. Tensors are JSON, or raw
little-endian FP32 after the JSON with the binary tensor data extension (tritonclient's
binary_data=True): the Inference-Header-Content-Length header gives the JSON's length, the
input declares "parameters": {"binary_data_size": n}; an output requested with "binary_data"
(or every output, with the request's "binary_data_output") is answered the same way.
"""
from __future__ import annotations

import functools
import struct
from typing import NamedTuple

import numpy as np
import orjson

from flts import forecasters
from flts.forecasters.onnx import INPUT_NAME, OUTPUT_NAME
from flts.infer.features import RequestError, with_intervals
from flts.infer.model import ServedModel

_NUMBER_TYPES, _INT = {int, float}, {int}
_LITTLE_FP32 = np.dtype("<f4")
_NONE, _ALL = frozenset(), frozenset({"*"})  # _ALL is compared by identity: every output is binary
BINARY_HEADER = b"inference-header-content-length"


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


class InferRequest(NamedTuple):
    x: np.ndarray               # [batch, L, F] float32, read-only
    request_id: str | None
    binary_outputs: frozenset   # the outputs to answer as raw bytes (binary tensor data extension)


def split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON, the binary tensor data after it): Inference-Header-Content-Length's split."""
    if header_length is None:
        return raw, b""
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise RequestError(f"Inference-Header-Content-Length {header_length[:20]!r} must be a byte count "
                           f"within the body's {len(raw)} bytes")
    return raw[:int(header_length)], raw[int(header_length):]


def parse_infer(body, model: ServedModel, max_rows: int, binary: bytes = b"") -> InferRequest:
    """The infer request (its JSON parsed, and the binary tensor data that followed it)."""
    if not isinstance(body, dict):
        raise RequestError("the v2 infer body must be a JSON object")
    tensor = _input_tensor(body.get("inputs"))
    shape = _input_shape(tensor.get("shape"), model.spec, max_rows)
    parameters = tensor.get("parameters")
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is None and binary:
        raise RequestError("binary data follows the JSON but the input declares no 'binary_data_size'")
    x = _fp32(tensor.get("data"), shape) if binary_size is None else _raw_fp32(binary, binary_size, shape)
    request_id = body.get("id")
    return InferRequest(x, request_id if isinstance(request_id, str) else None, _binary_outputs(body))


def _input_tensor(inputs) -> dict:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(f"'inputs' must be a list with one tensor named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise RequestError(f"unknown input {str(tensor.get('name'))[:50]!r}; the model takes {INPUT_NAME!r}")
    if tensor.get("datatype") != "FP32":
        raise RequestError(f"input datatype must be 'FP32', got {str(tensor.get('datatype'))[:20]!r}")
    return tensor


def _input_shape(shape, spec, max_rows: int) -> list[int]:
    expected = [spec.input_seq_len, len(spec.feature_columns)]
    if (not isinstance(shape, list) or len(shape) != 3 or set(map(type, shape)) != _INT
            or shape[1:] != expected or not 1 <= shape[0] <= max_rows):
        raise RequestError(f"input shape must be [batch, {expected[0]}, {expected[1]}] with 1 <= batch <= {max_rows}, "
                           f"got {str(shape)[:60]}")
    return shape


def _fp32(data, shape: list[int]) -> np.ndarray:
    """The JSON numbers of `data` (flat or nested row-major) as a float32 array of `shape`."""
    size = shape[0] * shape[1] * shape[2]
    if not isinstance(data, list):
        raise RequestError(f"'data' must hold {size} numbers (row-major)")
    types = set(map(type, data))  # one pass in C: a generator per value would cost more than the model
    if list in types:
        data = _flatten(data)  # nested (row-major) lists are allowed by the protocol
        types = set(map(type, data))
    if len(data) != size:
        raise RequestError(f"'data' must hold {size} numbers (row-major)")
    if not types <= _NUMBER_TYPES:
        raise RequestError("'data' must hold only numbers (no null, NaN, strings or booleans)")
    try:  # struct converts to float32 in one C pass and refuses what float32 cannot hold
        packed = _fp32_packer(size)(*data)
    except OverflowError:
        raise RequestError("'data' holds a value out of the float32 range") from None
    return np.frombuffer(packed, _LITTLE_FP32).reshape(shape)


def _raw_fp32(binary: bytes, declared, shape: list[int]) -> np.ndarray:
    size = shape[0] * shape[1] * shape[2] * _LITTLE_FP32.itemsize
    if declared != size or type(declared) is not int or len(binary) != size:
        raise RequestError(f"the binary input must be {size} bytes (FP32 {shape}); 'binary_data_size' is "
                           f"{str(declared)[:20]} and {len(binary)} bytes follow the JSON")
    x = np.frombuffer(binary, _LITTLE_FP32).reshape(shape)
    if not np.isfinite(x).all():
        raise RequestError("the binary input holds NaN or infinity")
    return x


def _binary_outputs(body: dict) -> frozenset:
    """The outputs requested as binary: each with "binary_data", or all with "binary_data_output"."""
    parameters, outputs = body.get("parameters"), body.get("outputs")
    if isinstance(parameters, dict) and parameters.get("binary_data_output") is True:
        return _ALL
    if not isinstance(outputs, list):
        return _NONE
    return frozenset(o["name"] for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str)
                     and isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True)


@functools.lru_cache(maxsize=64)
def _fp32_packer(size: int):
    return struct.Struct(f"<{size}f").pack


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


def infer_response(model: ServedModel, forecast: np.ndarray, request: InferRequest,
                   scale: np.ndarray | float = 1.0) -> tuple[bytes, dict | None]:
    """The infer answer: (body, extra headers). JSON, where orjson writes the float32 arrays itself
    (no Python floats), and the raw bytes of the outputs requested as binary after it.
    `scale`: each window's interval scale (flts.infer.features.interval_scales)."""
    tensors = {OUTPUT_NAME: forecast, **{f"{OUTPUT_NAME}_{name}": bound
                                         for name, bound in with_intervals(forecast, model.spec, scale).items()}}
    outputs, binary = [], []
    for name, tensor in tensors.items():
        data = np.ascontiguousarray(tensor, dtype=_LITTLE_FP32).ravel()
        output = {"name": name, "datatype": "FP32", "shape": list(tensor.shape)}
        if request.binary_outputs is _ALL or name in request.binary_outputs:
            binary.append(data.tobytes())
            output["parameters"] = {"binary_data_size": data.nbytes}
        else:
            output["data"] = data
        outputs.append(output)
    response = {"model_name": model.info.identifier, "model_version": model.info.run_id, "outputs": outputs}
    if request.request_id is not None:
        response["id"] = request.request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, None
    return b"".join([header, *binary]), {"Inference-Header-Content-Length": str(len(header)),
                                         "Content-Type": "application/octet-stream"}
