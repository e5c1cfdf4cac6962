"""Scoring a trained run on the held-out test split, exactly as it would be served.

A run's serving artifact (MLflow layout, see docs/design.md principle 8):

    <MODEL_TYPE>/signature.json   what goes in and out (format, columns, window lengths)
    <MODEL_TYPE>/<model file>     named by the format (flts.forecasters: model.onnx, model.json)

Eval and the accuracy benchmark load it here through its format's loader, which cuts the
windows of the scoring frame (`scoring_frame`: the test rows, after a lookback from the
training tail when the test split follows it) with `flts.windows.make_windows`; they score
them with `flts.metrics`. The baselines (persistence, seasonal naive) forecast the very same
windows.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq

from flts import forecasters
from flts.forecasters import SIGNATURE, ArtifactError
from flts.forecasters.base import ScoringModel, first_line
from flts.intervals import IntervalScaling, window_scales
from flts.storage import ObjectStore
from flts.windows import lookback_rows, window_count

REQUIRED_SIGNATURE_KEYS = ("format", "target", "input_seq_len", "output_seq_len")


# ---------------------------------------------------------------- data

def read_parquet(store: ObjectStore, bucket: str, key: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(store.get_bytes(bucket, key))).to_pandas()


@dataclass(frozen=True)
class Split:
    """The processed train and test frames of one config hash."""

    train: pd.DataFrame
    test: pd.DataFrame


# ---------------------------------------------------------------- artifacts

def check_signature(signature: Any, where: str) -> dict:
    if not isinstance(signature, dict):
        raise ArtifactError(f"{where}: signature.json is not a JSON object")
    missing = [k for k in REQUIRED_SIGNATURE_KEYS if k not in signature]
    if missing:
        raise ArtifactError(f"{where}: signature.json lacks {missing}")
    try:
        artifact_format = forecasters.artifact_format(signature["format"])
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    if artifact_format.takes_features and not signature.get("feature_columns"):
        raise ArtifactError(f"{where}: a {artifact_format.name!r} signature needs feature_columns")
    for key in ("input_seq_len", "output_seq_len"):
        if not isinstance(signature[key], int) or signature[key] < 1:
            raise ArtifactError(f"{where}: {key} must be a positive integer, got {signature[key]!r}")
    return signature


@dataclass
class ServingArtifact:
    """A run's serving files on local disk, checked to load."""

    run_id: str
    model_type: str
    signature: dict
    signature_path: Path
    model_path: Path

    @property
    def format(self) -> str:
        return self.signature["format"]


def download_serving_artifact(client, run_id: str, model_type: str, dst: Path) -> ServingArtifact:
    """Fetch `<MODEL_TYPE>/signature.json` and the model file of a run from MLflow."""
    where = f"run {run_id} ({model_type})"
    dst.mkdir(parents=True, exist_ok=True)
    try:
        sig_path = Path(client.download_artifacts(run_id, f"{model_type}/{SIGNATURE}", str(dst)))
    except Exception as exc:  # noqa: BLE001 - MlflowException or OSError, depending on the store
        raise ArtifactError(f"{where}: no {model_type}/{SIGNATURE} ({first_line(exc)})") from None
    try:
        signature = check_signature(orjson.loads(sig_path.read_bytes()), where)
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{where}: signature.json is not valid JSON ({exc})") from None
    name = forecasters.artifact_format(signature["format"]).model_file
    try:
        model_path = Path(client.download_artifacts(run_id, f"{model_type}/{name}", str(dst)))
    except Exception as exc:  # noqa: BLE001 - as above
        raise ArtifactError(f"{where}: no {model_type}/{name} ({first_line(exc)})") from None
    return ServingArtifact(run_id, model_type, signature, sig_path, model_path)


# ---------------------------------------------------------------- models

def load_forecaster(artifact: ServingArtifact) -> ScoringModel:
    """The model behind an artifact, loaded by its format; ArtifactError names the run when it does not load."""
    try:
        return forecasters.artifact_format(artifact.format).load_for_scoring(artifact.model_path, artifact.signature)
    except ArtifactError as exc:
        raise ArtifactError(f"run {artifact.run_id} ({artifact.model_type}): {exc}") from None


# ---------------------------------------------------------------- common windows

def first_origin(signatures: list[dict]) -> int:
    """The first forecast origin every model can serve: models with shorter inputs skip the
    leading windows so that all of them forecast the same target rows."""
    return max(sig["input_seq_len"] for sig in signatures)


@dataclass(frozen=True)
class ScoringFrame:
    """The rows every candidate and baseline forecasts (docs/design.md principle 4).

    `frame` is the last `lookback` training rows followed by the test rows; the windows' first
    target row is `origin` (the longest input window), and every row after it is a target too.
    When the test split directly follows the training split, lookback = origin, so the
    inputs of the first windows come from the training tail and every test row is scored.
    When the test file stands alone, lookback = 0 and its first `origin` rows are inputs only.
    """

    frame: pd.DataFrame
    train: pd.DataFrame  # the whole training split: the seasonal baseline looks further back
    lookback: int
    origin: int

    @property
    def first_scored_test_row(self) -> int:
        return self.origin - self.lookback

    def check_enough_rows(self, output_len: int) -> None:
        if window_count(len(self.frame), self.origin, output_len) < 1:
            raise ArtifactError(f"the test split has {len(self.frame) - self.lookback} rows: too few for one window "
                                f"of {self.first_scored_test_row} input + {output_len} output rows")

    def history(self, target: str) -> np.ndarray:
        """The training target before the frame's first row."""
        return self.train[target].to_numpy(np.float64)[:len(self.train) - self.lookback]

    def window_scales(self, target: str, windows: int, intervals: dict) -> np.ndarray:
        """[windows, steps]: the scales (flts.intervals.window_scales) of each scored window under a
        pointer's `intervals`, from all history before it (ones for fixed widths)."""
        series = np.concatenate([self.history(target), self.frame[target].to_numpy(np.float64)])
        first = len(series) - len(self.frame) + self.origin
        steps = len(intervals["half_widths"][0])
        return window_scales(series, first + np.arange(windows), IntervalScaling.of(intervals), steps)

    def persistence(self, target: str, output_len: int) -> np.ndarray:
        return persistence_forecast(self.frame[target].to_numpy(np.float64), self.origin, output_len)

    def seasonal_naive(self, target: str, output_len: int, season: int) -> np.ndarray:
        return seasonal_naive_forecast(self.history(target), self.frame[target].to_numpy(np.float64),
                                       self.origin, output_len, season)


def scoring_frame(split: Split, signatures: list[dict]) -> ScoringFrame:
    """The one scoring frame of a set of candidates: a lookback from the training tail when
    the test split follows it on its grid (`flts.windows.lookback_rows`), none otherwise."""
    origin = first_origin(signatures)
    ts = next((s["timestamp_column"] for s in signatures if s.get("timestamp_column")), None)
    follows = ts is not None and ts in split.train.columns and ts in split.test.columns
    # Without timestamps there is no telling whether the test split follows: score it alone.
    lookback = lookback_rows(split.train[ts], split.test[ts], origin) if follows else 0
    return frame_of(split, lookback, origin)


def frame_of(split: Split, lookback: int, origin: int) -> ScoringFrame:
    """The frame of `lookback` training rows + the test rows, first target at `origin`."""
    if not 0 <= lookback <= min(origin, len(split.train)):
        raise ValueError(f"a lookback of {lookback} rows would score training rows (origin {origin})")
    if not lookback:
        return ScoringFrame(split.test.reset_index(drop=True), split.train, 0, origin)
    frame = pd.concat([split.train.iloc[-lookback:], split.test], ignore_index=True)
    return ScoringFrame(frame, split.train, lookback, origin)


# ---------------------------------------------------------------- baselines

def persistence_forecast(target: np.ndarray, origin: int, output_len: int) -> np.ndarray:
    """y_hat[t+h] = y[t-1]: the last input value of the window, for every horizon step."""
    last = np.asarray(target, dtype=np.float64)[origin - 1: len(target) - output_len]
    return np.repeat(last[:, None], output_len, axis=1)


def seasonal_naive_forecast(history: np.ndarray, target: np.ndarray, origin: int, output_len: int,
                            season: int) -> np.ndarray:
    """y_hat[t+h] = y[t+h-season], looked up in `history` (the training target) followed by `target`."""
    if season < output_len:
        raise ValueError(f"a season of {season} steps cannot forecast {output_len} steps ahead")
    series = np.concatenate([np.asarray(history, np.float64), np.asarray(target, np.float64)])
    offset = len(history)
    n = window_count(len(target), origin, output_len)
    starts = offset + origin + np.arange(n) - season
    if starts[0] < 0:
        raise ValueError(f"{offset + origin} rows of history are too few for a season of {season} steps")
    return np.stack([series[starts + h] for h in range(output_len)], axis=1)


def season_steps(frequency_seconds: float, period_seconds: float = 86_400.0) -> int:
    """Steps in one period (a day by default) on a grid of `frequency_seconds`."""
    if not frequency_seconds or frequency_seconds <= 0:
        raise ValueError(f"frequency_seconds must be positive, got {frequency_seconds!r}")
    return max(1, round(period_seconds / frequency_seconds))


def frequency_of(frame: pd.DataFrame, timestamp_column: str) -> float:
    """The grid step in seconds (median spacing, robust to a stray gap)."""
    times = pd.to_datetime(frame[timestamp_column])
    return float(times.diff().dropna().dt.total_seconds().median())
