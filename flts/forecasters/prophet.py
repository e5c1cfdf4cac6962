"""PROPHET: the target and its timestamps, stored as prophet.serialize JSON ("prophet-json").

Prophet forecasts a time from the calendar alone, so the forecast for a window is Prophet's
value at that window's target timestamps, windowed like the target (flts.windows), which
makes it comparable with the RNNs on the same test windows. Intervals are neither scored
nor served, so `uncertainty_samples=0` (the slow part of predict). Every seasonality is
'auto': Prophet turns yearly, weekly and daily terms on only when the training span covers
two periods and the grid is finer than the period (a weekly term fitted on six days of data
extrapolates wildly: ElBorn's NRMSE is 1.92 with it, 0.83 without).

This module is imported only when a Prophet model is trained or loaded (pandas + prophet,
much slower than the ONNX path); prophet itself is imported on first use.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flts.forecasters.base import ArtifactError, Fitted, first_line, require_columns
from flts.logs import log
from flts.train.artifacts import fit_scaler
from flts.train.data import Split, validation_rows
from flts.train.errors import TrainingError
from flts.windows import make_windows

if TYPE_CHECKING:
    from flts.infer.features import InputSpec
    from flts.infer.settings import ServingSettings
    from flts.train.data import TrainData
    from flts.train.settings import TrainSettings


# ---------------------------------------------------------------- training

def fit(settings: TrainSettings, split: TrainData, folder: Path, label: str) -> Fitted:
    from prophet.serialize import model_to_json

    in_len, out_len = settings.input_seq_len, settings.output_seq_len
    model, seconds = fit_prophet(split.train, settings.prophet_max_rows)
    future = pd.DataFrame({"ds": split.test.times.to_numpy()})
    pred, truth = forecast_windows(model, future, split.test.target, in_len, out_len)
    return Fitted(model_bytes=model_to_json(model).encode(), forecast=pred, truth=truth,
                  scaler=fit_scaler(split.train.features, split.feature_columns), metrics={"train_seconds": seconds},
                  validation=validation_forecasts(settings, split.train))


def validation_forecasts(settings: TrainSettings, train: Split) -> tuple[np.ndarray, np.ndarray]:
    """A second fit on the rows before the validation cut, forecasting the validation windows
    (the served model, fitted on every training row, would be in-sample there)."""
    in_len, out_len = settings.input_seq_len, settings.output_seq_len
    cut = len(train.target) - validation_rows(len(train.target), in_len, out_len, settings.val_fraction)
    before = Split(train.features[:cut], train.target[:cut], train.times.iloc[:cut])
    model, _ = fit_prophet(before, settings.prophet_max_rows)
    rows = slice(cut - in_len, None)  # the validation windows' inputs reach back before the cut
    return forecast_windows(model, pd.DataFrame({"ds": train.times.iloc[rows].to_numpy()}), train.target[rows],
                            in_len, out_len)


def fit_prophet(train: Split, max_rows: int = 0):
    from prophet import Prophet

    _check_tmpdir()
    frame = pd.DataFrame({"ds": train.times.to_numpy(), "y": train.target})
    if max_rows:
        frame = frame.iloc[-max_rows:]
    started = time.perf_counter()
    model = Prophet(yearly_seasonality="auto", weekly_seasonality="auto", daily_seasonality="auto",
                    uncertainty_samples=0)
    model.fit(frame)
    seconds = time.perf_counter() - started
    log("train_fit_done", model_type="PROPHET", rows=len(frame), seconds=round(seconds, 2))
    return model, seconds


def _check_tmpdir() -> None:
    """cmdstanpy writes the data and the fit to temporary files; a read-only TMPDIR fails deep inside it."""
    folder = tempfile.gettempdir()
    if not os.access(folder, os.W_OK):
        raise TrainingError(f"Prophet needs a writable temporary folder; {folder} is not writable (set TMPDIR)")


def forecast_windows(model, future: pd.DataFrame, target: np.ndarray, input_len: int,
                     output_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, truths), both [windows, output_len]: Prophet's value at every row of `future`,
    windowed exactly like the target so that they line up."""
    yhat = model.predict(future)["yhat"].to_numpy(np.float64)
    return _windowed(yhat, input_len, output_len), _windowed(target, input_len, output_len)


def _windowed(series: np.ndarray, input_len: int, output_len: int) -> np.ndarray:
    _, y = make_windows(np.zeros((len(series), 1), np.float32), series, input_len, output_len)
    return y


# ---------------------------------------------------------------- loading

def model_from_json(source: bytes | Path, where: str):
    """The stored model, ready to predict; ArtifactError (naming `where`) when it does not parse."""
    from prophet.serialize import model_from_json as parse

    try:
        model = parse((source.read_bytes() if isinstance(source, Path) else source).decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - a malformed file fails in many ways inside prophet
        raise ArtifactError(f"{where} is not a Prophet model JSON: {first_line(exc)}") from None
    model.uncertainty_samples = 0  # intervals are neither scored nor served; skipping them is ~100x faster
    return model


class ProphetForecaster:
    """Scoring: each target timestamp of a test frame from the calendar (and any regressors at that time)."""

    def __init__(self, path: Path, signature: dict):
        self.model = model_from_json(path, path.name)
        self.signature = signature

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        sig = self.signature
        in_len = sig["input_seq_len"]
        ts = sig.get("timestamp_column") or "time"
        rows = frame.iloc[first_origin - in_len:].reset_index(drop=True)
        future = pd.DataFrame({"ds": pd.to_datetime(rows[require_columns(rows, [ts])[0]]).dt.tz_localize(None)})
        for name in self.model.extra_regressors:
            future[name] = rows[require_columns(rows, [name])[0]].to_numpy(np.float64)
        return forecast_windows(self.model, future, rows[sig["target"]].to_numpy(np.float64), in_len,
                                sig["output_seq_len"])


def load_for_scoring(path: Path, signature: dict) -> ProphetForecaster:
    return ProphetForecaster(path, signature)


class ProphetPredictor:
    """Serving: the forecast timestamps follow the last input row at the request's step."""

    def __init__(self, model, spec: InputSpec):
        self.model, self.spec = model, spec
        self.regressors = list(getattr(model, "extra_regressors", {}) or {})
        unknown = [r for r in self.regressors if r not in spec.feature_columns]
        if unknown:
            raise ArtifactError(f"Prophet regressors {unknown} are not among the feature columns")

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
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


def load_for_serving(raw: bytes, spec: InputSpec, settings: ServingSettings) -> ProphetPredictor:
    return ProphetPredictor(model_from_json(raw, "the artifact"), spec)
