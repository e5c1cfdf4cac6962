"""A promoted model, ready to serve: pointer → artifact bytes → its format's predictor, warmed.

The pointer's artifact_format names the loader (flts.forecasters): an ONNX graph runs in
ONNX Runtime with the scaling inside the graph, so nothing is unpickled here (docs/design.md
principle 5; the contract is in flts.forecasters.onnx). A Prophet model ("prophet-json") is
served by a lazily imported module (pandas + prophet, much slower) that the ONNX path never loads.
"""
from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

import numpy as np

from flts import forecasters
from flts.events import EventError, PromotionPointer
from flts.forecasters import SIGNATURE, ArtifactError, ArtifactFormat
from flts.forecasters.base import Predictor
from flts.infer.features import InputSpec
from flts.infer.settings import ServingSettings
from flts.intervals import IntervalScaling
from flts.logs import log
from flts.storage import ObjectNotFound, ObjectStore, StorageError, get_json


class ModelError(EventError):
    """The promoted artifact cannot be served as described (retrying will not help)."""


class ModelTooLarge(ModelError):
    """The artifact is larger than MAX_MODEL_BYTES: refused before it is downloaded."""


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

    @property
    def source(self) -> tuple[str, str, str]:
        """What the model was loaded from: two pointers with the same source serve the same model."""
        return self.run_id, self.artifact_bucket, self.artifact_key

    def labels(self) -> dict[str, str]:
        return {"identifier": self.identifier, "run_id": self.run_id, "model_type": self.model_type,
                "config_hash": self.config_hash, "format": self.artifact_format}


class ServedModel:
    def __init__(self, info: ModelInfo, spec: InputSpec, predictor: Predictor, load_seconds: float,
                 size_bytes: int = 0):
        self.info, self.spec, self.predictor = info, spec, predictor
        self.load_seconds = load_seconds
        self.size_bytes = size_bytes  # the artifact's bytes: what MAX_MODEL_BYTES counts
        self.last_used = 0.0  # time.monotonic() of the last request that named it (ModelRegistry's LRU)
        self.window_seconds: float | None = None  # its fastest run per window so far (the batcher's inline choice)

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        return self.predictor.predict(x, last_wall, step)

    def timed_predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        """predict, keeping the fastest time per window: a run in a lane's thread also counts the
        wait for the GIL, so the minimum, not the last, is the model's own time (the batcher runs
        fast models' batches on the event loop)."""
        started = time.perf_counter()
        out = self.predictor.predict(x, last_wall, step)
        seconds = (time.perf_counter() - started) / max(1, len(x))
        if self.window_seconds is None or seconds < self.window_seconds:
            self.window_seconds = seconds
        return out

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


def input_spec(pointer: PromotionPointer, signature: dict, artifact_format: ArtifactFormat) -> InputSpec:
    """The pointer's fields, falling back to signature.json beside the artifact."""
    def field(name):
        value = getattr(pointer, name, None)
        return value if value is not None else signature.get(name)

    required = ["input_seq_len", "output_seq_len", "target"]
    if artifact_format.takes_features:  # a model that reads only timestamps (Prophet) may use no feature column
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
        intervals=_intervals(pointer, int(field("output_seq_len"))),
        scaling=IntervalScaling.of(pointer.intervals.model_dump() if pointer.intervals else None),
    )


def _intervals(pointer: PromotionPointer, horizon: int) -> tuple[tuple[float, tuple[float, ...]], ...]:
    if pointer.intervals is None:
        return ()
    if len(pointer.intervals.half_widths[0]) != horizon:
        raise ModelError(f"the pointer's intervals cover {len(pointer.intervals.half_widths[0])} steps, "
                         f"the model forecasts {horizon}")
    return tuple(zip(pointer.intervals.levels, map(tuple, pointer.intervals.half_widths), strict=True))


def _signature(store: ObjectStore, pointer: PromotionPointer) -> dict:
    needed = (pointer.input_seq_len, pointer.output_seq_len, pointer.feature_columns, pointer.target)
    if all(v is not None for v in needed):
        return {}  # the pointer is complete: one object fetch fewer on a cold start
    key = posixpath.join(posixpath.dirname(pointer.artifact_key), SIGNATURE)
    try:
        return get_json(store, pointer.artifact_bucket, key)
    except ObjectNotFound:
        return {}


def check_size(pointer: PromotionPointer, size: int, settings: ServingSettings) -> None:
    """ModelTooLarge, naming the identifier, the size and the limit, when the artifact cannot be held."""
    if size > settings.max_model_bytes:
        raise ModelTooLarge(f"the champion of identifier {pointer.identifier[:100]!r} (run {pointer.run_id}, "
                            f"{pointer.artifact_bucket}/{pointer.artifact_key}) is {size:,} bytes, over "
                            f"MAX_MODEL_BYTES={settings.max_model_bytes:,}: not loaded")


def load_model(store: ObjectStore, pointer: PromotionPointer, settings: ServingSettings) -> ServedModel:
    """Download, build and warm one model. ObjectNotFound / ModelError name what is wrong.
    The pointer must come from the promotion bucket, checked (flts.infer.pointers)."""
    started = time.perf_counter()
    try:  # a format that is unknown, or an artifact its loader refuses, cannot be served: ModelError
        artifact_format = forecasters.artifact_format(pointer.artifact_format)
        spec = input_spec(pointer, _signature(store, pointer), artifact_format)
        check_size(pointer, store.size(pointer.artifact_bucket, pointer.artifact_key), settings)
        raw = store.get_bytes(pointer.artifact_bucket, pointer.artifact_key)
        check_size(pointer, len(raw), settings)  # replaced since the size was read: still bounded
        predictor = artifact_format.load_for_serving(raw, spec, settings)
    except ArtifactError as exc:
        raise ModelError(str(exc)) from None
    info = ModelInfo(pointer.identifier, pointer.run_id, pointer.model_type, pointer.config_hash,
                     pointer.artifact_format, pointer.artifact_bucket, pointer.artifact_key, pointer.timestamp)
    model = ServedModel(info, spec, predictor, 0.0, len(raw))
    model.warm_up((1, settings.effective_batch_size))
    model.load_seconds = time.perf_counter() - started
    log("model_loaded", identifier=info.identifier, run_id=info.run_id, model_type=info.model_type,
        format=info.artifact_format, artifact=f"{info.artifact_bucket}/{info.artifact_key}",
        bytes=len(raw), seconds=round(model.load_seconds, 4))
    return model


__all__ = ["ModelError", "ModelInfo", "ModelTooLarge", "ServedModel", "load_model", "StorageError"]
