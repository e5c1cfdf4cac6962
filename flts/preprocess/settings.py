"""Preprocess settings: what changes the output goes into the config hash (`knobs()`)."""
from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import field_validator, model_validator

from flts.settings import CommaList, ConfigError, DataColumns, Flag, ProcessedBucket, knob

PREPROCESS_VERSION = 1

# Knobs added after outputs were already known by their hash: they enter knobs() only when
# set, so a dataset preprocessed with them at their defaults keeps the hash it always had.
SET_ONLY_KNOBS = ("timestamp_format", "timestamp_dayfirst", "timezone")


class PreprocessSettings(ProcessedBucket, DataColumns):  # fields: the last base's, the first's, then these
    timestamp_format: str = knob("TIMESTAMP_FORMAT", "",
                                 "strftime format of the timestamps, e.g. %d/%m/%Y %H:%M; empty = inferred from the "
                                 "first row")
    timestamp_dayfirst: Flag = knob("TIMESTAMP_DAYFIRST", False,
                                    "dates are written day first (13/06/2000); without it, dates that read both ways "
                                    "are refused")
    timezone: str = knob("TIMEZONE", "",
                         "IANA time zone of timestamps without a UTC offset (e.g. Europe/Madrid); set = every "
                         "timestamp is converted to UTC and stored as naive UTC")
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

    @field_validator("timestamp_format")
    @classmethod
    def _strftime_format(cls, value: str) -> str:
        if value and "%" not in value:
            raise ValueError("a strftime format such as %d/%m/%Y %H:%M")
        return value

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("an IANA time zone name such as Europe/Madrid or UTC") from None
        return value

    @model_validator(mode="after")
    def _one_date_order(self) -> PreprocessSettings:
        if self.timestamp_format and self.timestamp_dayfirst:
            raise ConfigError("set TIMESTAMP_FORMAT or TIMESTAMP_DAYFIRST, not both: the format already says where "
                              "the day is")
        return self

    @model_validator(mode="after")
    def _keeps_timestamp_and_target(self) -> PreprocessSettings:
        kept = {self.timestamp_column, self.target} & set(self.drop_columns)
        if kept:
            raise ConfigError(f"DROP_COLUMNS must not name the timestamp or target column: {sorted(kept)}")
        return self

    def knobs(self) -> dict:
        """The settings that change the output (bucket names and limits do not)."""
        fields = type(self).model_fields
        set_only = {name: getattr(self, name) for name in SET_ONLY_KNOBS if getattr(self, name) != fields[name].default}
        return set_only | {
            "version": PREPROCESS_VERSION,
            "timestamp_column": self.timestamp_column,
            "target": self.target,
            "test_fraction": self.test_fraction,
            "clip_outliers": self.clip_outliers,
            "clip_quantiles": list(self.clip_quantiles) if self.clip_outliers else None,
            "time_features": self.time_features,
            "drop_columns": sorted(self.drop_columns),
        }
