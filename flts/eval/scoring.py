"""Scoring a trained run on the held-out test split, exactly as it would be served.

A run's serving artifact (MLflow layout, see docs/design.md principle 8):

    <MODEL_TYPE>/signature.json   what goes in and out (format, columns, window lengths)
    <MODEL_TYPE>/<model file>     named by the format (flts.forecasters: model.onnx, model.json)

Eval and the accuracy benchmark load it here through its format's loader, which cuts the
test windows with `flts.windows.make_windows`; they score them with `flts.metrics`. The baselines
(persistence, seasonal naive) forecast the very same windows.
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
from flts.storage import ObjectStore
from flts.windows import window_count

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


def check_enough_rows(rows: int, origin: int, output_len: int) -> None:
    if window_count(rows, origin, output_len) < 1:
        raise ArtifactError(f"the test split has {rows} rows: too few for one window of "
                            f"{origin} input + {output_len} output rows")


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


def one_step_nrmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """RMSE / mean(y) of the first forecast step, original units (the paper's figure)."""
    y, p = np.asarray(y_true, np.float64)[:, 0], np.asarray(y_pred, np.float64)[:, 0]
    return float(np.sqrt(np.mean((p - y) ** 2)) / np.mean(y))
