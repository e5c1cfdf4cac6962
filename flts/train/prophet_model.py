"""Prophet on the target and its timestamps, scored on the same test windows as the RNNs.

Prophet forecasts a time from the calendar alone, so the forecast for a window is
Prophet's value at that window's target timestamps. Intervals are not scored, so
`uncertainty_samples=0` (the slow part of predict). Every seasonality is 'auto': Prophet
turns yearly, weekly and daily terms on only when the training span covers two periods
and the grid is finer than the period (a weekly term fitted on six days of data
extrapolates wildly: ElBorn's NRMSE is 1.92 with it, 0.83 without).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import pandas as pd

from flts.logs import log
from flts.train.data import Split
from flts.train.errors import TrainingError
from flts.windows import make_windows


def fit(train: Split, max_rows: int = 0):
    from prophet import Prophet

    _check_tmpdir()
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)  # one INFO line per Stan call otherwise
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


def forecast_windows(model, test: Split, input_len: int, output_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, truths), both [windows, output_len], aligned by flts.windows like the RNN's."""
    yhat = model.predict(pd.DataFrame({"ds": test.times.to_numpy()}))["yhat"].to_numpy(np.float64)
    placeholder = np.zeros((len(yhat), 1), np.float32)
    _, pred = make_windows(placeholder, yhat, input_len, output_len)
    _, truth = make_windows(placeholder, test.target, input_len, output_len)
    return pred, truth


def to_json(model) -> str:
    from prophet.serialize import model_to_json

    return model_to_json(model)


def _check_tmpdir() -> None:
    """cmdstanpy writes the data and the fit to temporary files; a read-only TMPDIR fails deep inside it."""
    folder = tempfile.gettempdir()
    if not os.access(folder, os.W_OK):
        raise TrainingError(f"Prophet needs a writable temporary folder; {folder} is not writable (set TMPDIR)")
