"""A promoted model, ready to serve: pointer → artifact bytes → ONNX Runtime session, warmed.

The ONNX contract (written by eval): input "input" float32 [batch, input_seq_len,
n_features] of RAW feature values in feature_columns order; output "forecast" float32
[batch, output_seq_len] in original units. The scaling lives inside the graph, so nothing
is unpickled here (DESIGN.md principle 5). A Prophet model ("prophet-json") is served by
a lazily imported path (pandas + prophet, much slower) that the ONNX path never loads.
"""
from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

import numpy as np

from flts.events import EventError, PromotionPointer
from flts.infer.features import InputSpec
from flts.infer.settings import ServingSettings
from flts.logs import log
from flts.promotion import resolve_pointer
from flts.storage import ObjectNotFound, ObjectStore, StorageError, get_json

INPUT_NAME = "input"
OUTPUT_NAME = "forecast"


class ModelError(EventError):
    """The promoted artifact cannot be served as described (retrying will not help)."""


@dataclass(frozen=True)
class ModelInfo:
    identifier: str
    run_id: str
    model_type: str
    config_hash: str
    artifact_format: str
    artifact_bucket: str
    artifact_key: str
    timestamp: str

    def labels(self) -> dict[str, str]:
        return {"identifier": self.identifier, "run_id": self.run_id, "model_type": self.model_type,
                "config_hash": self.config_hash, "format": self.artifact_format}


class OrtPredictor:
    def __init__(self, model_bytes: bytes, settings: ServingSettings):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Threads are set on purpose: with intra_op=1 a run uses only its calling thread,
        # so parallelism comes from worker lanes/processes instead of ORT's spinning pool,
        # which would fight the event loop for 2 cores.
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = settings.ort_inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for corrupt graphs
            raise ModelError(f"not a loadable ONNX model: {str(exc).splitlines()[0][:300]}") from None

    def check(self, spec: InputSpec) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelError(f"the ONNX graph must have input {INPUT_NAME!r} and output {OUTPUT_NAME!r}; "
                             f"it has inputs {list(inputs)} and outputs {list(outputs)}")
        shape = inputs[INPUT_NAME].shape
        expected = [None, spec.input_seq_len, len(spec.feature_columns)]
        if len(shape) != 3 or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expected, strict=False)):
            raise ModelError(f"ONNX input shape {shape} does not match [batch, {spec.input_seq_len}, "
                             f"{len(spec.feature_columns)}] from the pointer")

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


class ProphetPredictor:
    """Prophet's own JSON; imported only when such a model is promoted (slow path)."""

    def __init__(self, model_bytes: bytes, spec: InputSpec):
        from prophet.serialize import model_from_json  # noqa: PLC0415 - lazy on purpose

        try:
            self.model = model_from_json(model_bytes.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - any parse failure means the artifact is bad
            raise ModelError(f"not a Prophet JSON model: {exc}") from None
        self.model.uncertainty_samples = 0  # no intervals are served; skipping them is ~100x faster
        self.spec = spec
        self.regressors = list(getattr(self.model, "extra_regressors", {}) or {})
        unknown = [r for r in self.regressors if r not in spec.feature_columns]
        if unknown:
            raise ModelError(f"Prophet regressors {unknown} are not among the feature columns")

    def check(self, spec: InputSpec) -> None:
        pass

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        import pandas as pd  # noqa: PLC0415 - lazy on purpose

        horizon = self.spec.output_seq_len
        k = np.arange(1, horizon + 1)
        seconds = (last_wall[:, None] + step[:, None] * k[None, :]).ravel()
        future = pd.DataFrame({"ds": pd.to_datetime(seconds, unit="s")})
        # Future regressor values are unknown: hold each at its last observed value.
        for name in self.regressors:
            j = self.spec.feature_columns.index(name)
            future[name] = np.repeat(x[:, -1, j], horizon)
        forecast = self.model.predict(future)["yhat"].to_numpy(dtype=np.float32)
        return forecast.reshape(len(x), horizon)


class ServedModel:
    def __init__(self, info: ModelInfo, spec: InputSpec, predictor, load_seconds: float):
        self.info, self.spec, self.predictor = info, spec, predictor
        self.load_seconds = load_seconds

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        return self.predictor.predict(x, last_wall, step)

    def warm_up(self, batch_sizes=(1,)) -> None:
        """First runs allocate ORT's buffers; do them before the model takes traffic."""
        shape = (self.spec.input_seq_len, len(self.spec.feature_columns))
        for size in sorted(set(batch_sizes)):
            out = self.predict(np.zeros((size, *shape), np.float32), np.zeros(size), np.full(size, 60.0))
            if out.shape != (size, self.spec.output_seq_len):
                raise ModelError(f"the model answered shape {list(out.shape)} for a batch of {size}; "
                                 f"the pointer says [batch, {self.spec.output_seq_len}]")

    def __repr__(self) -> str:
        return f"ServedModel({self.info.identifier}, run {self.info.run_id}, {self.info.artifact_format})"


def input_spec(pointer: PromotionPointer, signature: dict) -> InputSpec:
    """The pointer's fields, falling back to signature.json beside the artifact."""
    def field(name):
        value = getattr(pointer, name, None)
        return value if value is not None else signature.get(name)

    required = ["input_seq_len", "output_seq_len", "target"]
    if pointer.artifact_format == "onnx":  # a Prophet model may use no feature column at all
        required.append("feature_columns")
    missing = [n for n in required if field(n) is None]
    if missing:
        raise ModelError(f"the promotion pointer (and signature.json) lacks {missing}")
    return InputSpec(
        input_seq_len=int(field("input_seq_len")),
        output_seq_len=int(field("output_seq_len")),
        feature_columns=tuple(field("feature_columns") or ()),
        target=str(field("target")),
        timestamp_column=str(field("timestamp_column") or "time"),
        frequency_seconds=float(field("frequency_seconds")) if field("frequency_seconds") else None,
    )


def _signature(store: ObjectStore, pointer: PromotionPointer) -> dict:
    needed = (pointer.input_seq_len, pointer.output_seq_len, pointer.feature_columns, pointer.target)
    if all(v is not None for v in needed):
        return {}  # the pointer is complete: one object fetch fewer on a cold start
    key = posixpath.join(posixpath.dirname(pointer.artifact_key), "signature.json")
    try:
        return get_json(store, pointer.artifact_bucket, key)
    except ObjectNotFound:
        return {}


def load_model(store: ObjectStore, pointer: PromotionPointer, settings: ServingSettings) -> ServedModel:
    """Download, build and warm one model. ObjectNotFound / ModelError name what is wrong."""
    started = time.perf_counter()
    spec = input_spec(pointer, _signature(store, pointer))
    raw = store.get_bytes(pointer.artifact_bucket, pointer.artifact_key)
    if pointer.artifact_format == "onnx":
        predictor = OrtPredictor(raw, settings)
    else:
        predictor = ProphetPredictor(raw, spec)
    predictor.check(spec)
    info = ModelInfo(pointer.identifier, pointer.run_id, pointer.model_type, pointer.config_hash,
                     pointer.artifact_format, pointer.artifact_bucket, pointer.artifact_key, pointer.timestamp)
    model = ServedModel(info, spec, predictor, 0.0)
    model.warm_up((1, settings.effective_batch_size))
    model.load_seconds = time.perf_counter() - started
    log("model_loaded", identifier=info.identifier, run_id=info.run_id, model_type=info.model_type,
        format=info.artifact_format, artifact=f"{info.artifact_bucket}/{info.artifact_key}",
        bytes=len(raw), seconds=round(model.load_seconds, 4))
    return model


def resolve_and_load(store: ObjectStore, settings: ServingSettings, identifier: str | None = None) -> ServedModel:
    pointer = resolve_pointer(store, settings.promotion_bucket, identifier or settings.model_identifier or None)
    return load_model(store, pointer, settings)


__all__ = ["ModelError", "ModelInfo", "ServedModel", "load_model", "resolve_and_load", "StorageError"]
