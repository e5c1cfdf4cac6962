"""Preprocess settings: what changes the output goes into the config hash (`knobs()`)."""
from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator

from flts.settings import CommaList, ConfigError, DataColumns, Flag, ProcessedBucket, knob

PREPROCESS_VERSION = 1


class PreprocessSettings(ProcessedBucket, DataColumns):  # fields: the last base's, the first's, then these
    test_fraction: float = knob("TEST_FRACTION", 0.2,
                                "the last fraction of rows held out when no test file is given", gt=0, lt=1)
    clip_outliers: Flag = knob("CLIP_OUTLIERS", False,
                               "clip every numeric column to quantile bounds fitted on the training split only")
    clip_quantiles: tuple[float, float] = knob("CLIP_QUANTILES", (0.001, 0.999),
                                               "the two clipping quantiles, 0 <= low < high <= 1")
    time_features: Flag = knob("TIME_FEATURES", True,
                               "add minute_sin/cos (minute of day) and dow_sin/cos (day of week)")
    drop_columns: CommaList = knob("DROP_COLUMNS", (),
                                   "comma-separated columns to drop (e.g. a text column); not the timestamp or target")
    extra_hash_salt: str = knob("EXTRA_HASH_SALT", "", "any string; changes the config hash, so forces a new output")
    max_bytes: int = knob("MAX_UPLOAD_BYTES", 200 * 1024 * 1024,
                          "a larger raw file is refused", ge=1)
    force: Flag = knob("FORCE_REPROCESS", False, "recompute even when the outputs exist")
    emit_inference_data: Flag = knob("EMIT_INFERENCE_DATA", False, "also emit flts.inference-data")

    @field_validator("clip_quantiles", mode="before")
    @classmethod
    def _two_numbers(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            low, high = (float(q) for q in value.split(","))
        except ValueError:
            raise ValueError("two numbers like 0.001,0.999") from None
        return low, high

    @field_validator("clip_quantiles")
    @classmethod
    def _ordered_quantiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 1:
            raise ValueError("two quantiles 0 <= low < high <= 1")
        return value

    @model_validator(mode="after")
    def _keeps_timestamp_and_target(self) -> PreprocessSettings:
        kept = {self.timestamp_column, self.target} & set(self.drop_columns)
        if kept:
            raise ConfigError(f"DROP_COLUMNS must not name the timestamp or target column: {sorted(kept)}")
        return self

    def knobs(self) -> dict:
        """The settings that change the output (bucket names and limits do not)."""
        return {
            "version": PREPROCESS_VERSION,
            "timestamp_column": self.timestamp_column,
            "target": self.target,
            "test_fraction": self.test_fraction,
            "clip_outliers": self.clip_outliers,
            "clip_quantiles": list(self.clip_quantiles) if self.clip_outliers else None,
            "time_features": self.time_features,
            "drop_columns": sorted(self.drop_columns),
        }
