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
from flts.logs import log
from flts.promotion import resolve_pointer
from flts.storage import ObjectNotFound, ObjectStore, StorageError, get_json


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


class ServedModel:
    def __init__(self, info: ModelInfo, spec: InputSpec, predictor: Predictor, load_seconds: float):
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


def load_model(store: ObjectStore, pointer: PromotionPointer, settings: ServingSettings) -> ServedModel:
    """Download, build and warm one model. ObjectNotFound / ModelError name what is wrong."""
    started = time.perf_counter()
    try:  # a format that is unknown, or an artifact its loader refuses, cannot be served: ModelError
        artifact_format = forecasters.artifact_format(pointer.artifact_format)
        spec = input_spec(pointer, _signature(store, pointer), artifact_format)
        raw = store.get_bytes(pointer.artifact_bucket, pointer.artifact_key)
        predictor = artifact_format.load_for_serving(raw, spec, settings)
    except ArtifactError as exc:
        raise ModelError(str(exc)) from None
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
