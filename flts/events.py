"""Event contracts: CloudEvent types, their data models and validation.

Event data is always a claim (keys into object storage, run ids), never a data frame
or model bytes. The JSON Schemas in docs/schemas/ are generated from these models
(`flts schemas`), and a test fails when the committed files drift from the code.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from cloudevents.http import CloudEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DATASET_READY = "flts.dataset.ready"
TRAINING_DATA = "flts.training-data"
INFERENCE_DATA = "flts.inference-data"
MODEL_TRAINING = "flts.model-training"
MODEL_SELECTED = "flts.model-selected"

CLAIM_VERSION = 1
MAX_EVENT_BYTES = 256 * 1024


class EventError(ValueError):
    """The event itself is wrong: retrying cannot help (dead-letter it)."""


class _Data(BaseModel):
    # Unknown fields are allowed so producers can add to a contract without breaking consumers.
    model_config = ConfigDict(extra="allow")


class DatasetReady(_Data):
    bucket: str = Field(min_length=1)
    object_key: str = Field(min_length=1)
    identifier: str = Field(min_length=1)
    test_object_key: str | None = None


class DataClaim(_Data):
    """`flts.training-data` and `flts.inference-data`: processed Parquet in object storage."""

    bucket: str = Field(min_length=1)
    object_key: str = Field(min_length=1)
    config_hash: str = Field(min_length=8)
    identifier: str = Field(min_length=1)
    v: int = CLAIM_VERSION
    test_object_key: str | None = None
    meta_key: str | None = None
    rows: int | None = Field(default=None, ge=0)
    test_rows: int | None = Field(default=None, ge=0)
    target: str | None = None
    timestamp_column: str | None = None
    columns: list[str] | None = None


class ModelTraining(_Data):
    status: Literal["RUNNING", "SUCCESS", "FAILED"]
    model_type: str = Field(min_length=1)
    run_id: str | None = None
    experiment: str | None = None
    config_hash: str = Field(min_length=8)
    identifier: str = Field(min_length=1)
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    bucket: str | None = None
    object_key: str | None = None
    test_object_key: str | None = None


class PredictionIntervals(_Data):
    """Split-conformal intervals: at `levels[i]`, the true value lies within forecast ± half_widths[i][h]
    (× the window's scale of that step when scaled, flts.intervals.IntervalScaling) at horizon step h+1,
    from the validation windows' residuals."""

    levels: list[float] = Field(min_length=1)
    half_widths: list[list[float]] = Field(min_length=1)
    # All 0: half_widths are in the target's units. K > 0: they multiply the window's recent scale, the
    # mean |one-step change| of its last K+1 target values (flts.intervals.recent_change), so the
    # interval widens when the series turns volatile (normalised conformal).
    scale_rows: int = Field(default=0, ge=0)
    # S > 0 (at most K): the scale is the larger of that and the mean of the last S changes alone.
    short_scale_rows: int = Field(default=0, ge=0)
    # P > 0 (instead of K): step h's half-widths multiply its seasonal scale, the mean |one-step change|
    # within ±season_width rows of the row P (a day) before its target row, over up to season_days
    # days of the history (flts.intervals.seasonal_change).
    season_rows: int = Field(default=0, ge=0)
    season_days: int = Field(default=0, ge=0)
    season_width: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_row_per_level(self) -> PredictionIntervals:
        if not all(0 < level < 1 for level in self.levels):
            raise ValueError(f"levels must lie between 0 and 1, got {self.levels}")
        if len(self.half_widths) != len(self.levels) or not all(self.half_widths):
            raise ValueError("half_widths needs one non-empty row per level")
        if len({len(row) for row in self.half_widths}) != 1:
            raise ValueError("every level's half_widths row needs one value per horizon step")
        if self.season_rows and (self.scale_rows or self.season_days < 1):
            raise ValueError("seasonal intervals (season_rows > 0) need season_days >= 1 and no scale_rows")
        return self


class PromotionPointer(_Data):
    """Stored as JSON in the promotion bucket and carried by `flts.model-selected`."""

    identifier: str = Field(min_length=1)
    config_hash: str = Field(min_length=8)
    run_id: str = Field(min_length=1)
    model_type: str = Field(min_length=1)
    experiment: str
    model_uri: str
    rmse: float
    mae: float
    mse: float
    score: float
    timestamp: str
    weights: dict[str, float]
    # Where the serving artifact lies (claim check), so infer needs no MLflow client.
    artifact_bucket: str
    artifact_key: str
    artifact_format: Literal["onnx", "prophet-json", "mstl-json", "ensemble-json"] = "onnx"
    input_seq_len: int | None = None
    output_seq_len: int | None = None
    feature_columns: list[str] | None = None
    target: str | None = None
    timestamp_column: str | None = None
    frequency_seconds: float | None = None
    intervals: PredictionIntervals | None = None


EVENT_MODELS: dict[str, type[BaseModel]] = {
    DATASET_READY: DatasetReady,
    TRAINING_DATA: DataClaim,
    INFERENCE_DATA: DataClaim,
    MODEL_TRAINING: ModelTraining,
    MODEL_SELECTED: PromotionPointer,
}


def make_event(event_type: str, function: str, data: BaseModel | Mapping[str, Any]) -> CloudEvent:
    """A CloudEvent of one of our types, validated before it leaves the function."""
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise EventError(f"unknown event type {event_type!r}")
    # A model of another event type (or a dict) is validated against this type's model.
    if isinstance(data, model):
        payload = data
    elif isinstance(data, BaseModel):
        payload = _validate(event_type, model, data.model_dump(mode="json", exclude_none=True))
    else:
        payload = _validate(event_type, model, dict(data))
    body = payload.model_dump(mode="json", exclude_none=True)
    attributes = {
        "type": event_type,
        "source": f"/flts/{function}",
        "subject": body["identifier"],
        "id": str(uuid.uuid4()),
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, body)


def parse_data(event: CloudEvent, expected: tuple[str, ...] | None = None) -> BaseModel:
    """Validate an incoming event and return its typed data; EventError names the problem."""
    event_type = event["type"]
    if expected is not None and event_type not in expected:
        raise EventError(f"event type {event_type!r} is not handled here (expected one of {list(expected)})")
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise EventError(f"unknown event type {event_type!r} (known: {sorted(EVENT_MODELS)})")
    data = event.data
    if not isinstance(data, dict):
        raise EventError(f"{event_type}: data must be a JSON object, got {type(data).__name__}")
    return _validate(event_type, model, data)


def _validate(event_type: str, model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EventError(f"{event_type}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        if err["type"] == "missing":
            problems.append(f"missing field '{field}'")
        else:
            problems.append(f"field '{field}': {err['msg']}")
    return "; ".join(problems)


def json_schemas() -> dict[str, dict]:
    """One JSON Schema per event type (documentation lives in docs/schemas/)."""
    schemas = {}
    for event_type, model in EVENT_MODELS.items():
        schema = model.model_json_schema()
        schema["title"] = event_type
        schema["$id"] = f"https://flts.dev/schemas/{event_type}.json"
        schemas[event_type] = schema
    return schemas
