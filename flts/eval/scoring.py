"""Scoring a trained run on the held-out test split, exactly as it would be served.

A run's serving artifact (MLflow layout, see DESIGN.md):

    <MODEL_TYPE>/signature.json   what goes in and out (format, columns, window lengths)
    <MODEL_TYPE>/model.onnx       GRU/LSTM: raw features in, forecast in original units out
    <MODEL_TYPE>/model.json       PROPHET: prophet.serialize JSON

Eval and the accuracy benchmark load it here, cut the test windows with
`flts.windows.make_windows` and score them with `flts.metrics`. The baselines
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

from flts.storage import ObjectStore
from flts.windows import make_windows, window_count

SIGNATURE = "signature.json"
MODEL_FILES = {"onnx": "model.onnx", "prophet-json": "model.json"}
REQUIRED_SIGNATURE_KEYS = ("format", "target", "input_seq_len", "output_seq_len")
ONNX_BATCH = 4096


class ArtifactError(RuntimeError):
    """A run's serving artifact is missing, malformed or does not load; the message names it."""


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
    if signature["format"] not in MODEL_FILES:
        raise ArtifactError(f"{where}: unknown artifact format {signature['format']!r} (known: {sorted(MODEL_FILES)})")
    if signature["format"] == "onnx" and not signature.get("feature_columns"):
        raise ArtifactError(f"{where}: an ONNX signature needs feature_columns")
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
        raise ArtifactError(f"{where}: no {model_type}/{SIGNATURE} ({_first_line(exc)})") from None
    try:
        signature = check_signature(orjson.loads(sig_path.read_bytes()), where)
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{where}: signature.json is not valid JSON ({exc})") from None
    name = MODEL_FILES[signature["format"]]
    try:
        model_path = Path(client.download_artifacts(run_id, f"{model_type}/{name}", str(dst)))
    except Exception as exc:  # noqa: BLE001 - as above
        raise ArtifactError(f"{where}: no {model_type}/{name} ({_first_line(exc)})") from None
    return ServingArtifact(run_id, model_type, signature, sig_path, model_path)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- models

class OnnxForecaster:
    """Raw feature windows in, forecasts in original units out (scaling lives in the graph)."""

    def __init__(self, path: Path, signature: dict):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # scoring is small; leave the other cores to the trainers
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(f"{path.name} does not load in ONNX Runtime: {_first_line(exc)}") from None
        self.signature = signature
        self.input_name = signature.get("input_name", "input")
        self.output_name = signature.get("output_name", "forecast")

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        sig = self.signature
        in_len, out_len = sig["input_seq_len"], sig["output_seq_len"]
        columns = _columns(frame, sig["feature_columns"])
        rows = frame.iloc[first_origin - in_len:]
        x, y = make_windows(rows[columns].to_numpy(np.float32), rows[sig["target"]].to_numpy(np.float64),
                            in_len, out_len)
        preds = [self.session.run([self.output_name], {self.input_name: x[i:i + ONNX_BATCH]})[0]
                 for i in range(0, len(x), ONNX_BATCH)]
        pred = np.concatenate(preds).reshape(len(x), -1)
        if pred.shape[1] != out_len:
            raise ArtifactError(f"the graph answers {pred.shape[1]} steps, the signature says {out_len}")
        return pred, y


class ProphetForecaster:
    """Prophet forecasts each target timestamp from the calendar (and any regressors at that time)."""

    def __init__(self, path: Path, signature: dict):
        from prophet.serialize import model_from_json

        try:
            self.model = model_from_json(path.read_text())
        except Exception as exc:  # noqa: BLE001 - a malformed file fails in many ways inside prophet
            raise ArtifactError(f"{path.name} is not a Prophet model JSON: {_first_line(exc)}") from None
        self.model.uncertainty_samples = 0  # intervals are not scored; skipping them is ~100x faster
        self.signature = signature

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        sig = self.signature
        in_len, out_len = sig["input_seq_len"], sig["output_seq_len"]
        ts = sig.get("timestamp_column") or "time"
        rows = frame.iloc[first_origin - in_len:].reset_index(drop=True)
        future = pd.DataFrame({"ds": pd.to_datetime(rows[_columns(rows, [ts])[0]]).dt.tz_localize(None)})
        for name in self.model.extra_regressors:
            future[name] = rows[_columns(rows, [name])[0]].to_numpy(np.float64)
        yhat = self.model.predict(future)["yhat"].to_numpy(np.float64)
        # Window the per-row forecast exactly like the target, so Y and the prediction line up.
        _, pred = make_windows(np.zeros((len(rows), 1), np.float32), yhat, in_len, out_len)
        _, y = make_windows(np.zeros((len(rows), 1), np.float32), rows[sig["target"]].to_numpy(np.float64),
                            in_len, out_len)
        return pred, y


def _columns(frame: pd.DataFrame, names: list[str]) -> list[str]:
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ArtifactError(f"the test data has no column(s) {missing} (columns: {list(frame.columns)})")
    return list(names)


def load_forecaster(artifact: ServingArtifact):
    """The model behind an artifact, loaded; ArtifactError names the run when it does not load."""
    cls = OnnxForecaster if artifact.format == "onnx" else ProphetForecaster
    try:
        return cls(artifact.model_path, artifact.signature)
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
