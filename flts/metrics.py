"""Comparable metrics (docs/design.md principle 4).

Every model is scored on the same held-out test windows with the same target scaler
(mean/std of the training split's target): score = 0.5·rmse + 0.3·mae + 0.2·mse on the
scaled target, lowest wins. Original-unit RMSE/MAE, NRMSE (= RMSE / mean(y)) and MASE
(MAE / MAE of one-step persistence on the training target) are reported beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WEIGHTS = {"rmse": 0.5, "mae": 0.3, "mse": 0.2}


@dataclass(frozen=True)
class TargetScale:
    """The target scaler fitted on the training split only."""

    mean: float
    std: float
    naive_mae: float  # in-sample one-step persistence MAE, the MASE denominator

    @classmethod
    def fit(cls, train_target: np.ndarray) -> TargetScale:
        y = np.asarray(train_target, dtype=np.float64)
        std = float(y.std()) or 1.0
        naive = float(np.mean(np.abs(np.diff(y)))) if len(y) > 1 else 0.0
        return cls(mean=float(y.mean()), std=std, naive_mae=naive or 1.0)


def score(metrics: dict) -> float:
    return sum(weight * float(metrics[name]) for name, weight in WEIGHTS.items())


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, scale: TargetScale) -> dict[str, float]:
    """Metrics of forecasts in original units (any shape; all horizons pooled)."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"cannot score {y_pred.size} predictions against {y_true.size} targets")
    if not np.all(np.isfinite(y_pred)):
        raise ValueError("predictions contain NaN or inf")
    err = y_pred - y_true
    scaled = err / scale.std
    mse = float(np.mean(scaled ** 2))
    rmse_orig = float(np.sqrt(np.mean(err ** 2)))
    mae_orig = float(np.mean(np.abs(err)))
    metrics = {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(scaled))),
        "rmse_orig": rmse_orig,
        "mae_orig": mae_orig,
        "nrmse": rmse_orig / float(np.mean(y_true)) if np.mean(y_true) else float("nan"),
        "mase": mae_orig / scale.naive_mae,
    }
    metrics["score"] = score(metrics)
    return metrics


def recent_change(rows: np.ndarray, short_rows: int = 0) -> np.ndarray:
    """The local scale of normalised intervals: the mean absolute one-step change of the last
    axis ([..., K+1] target values → [...]); with short_rows, the larger of that and the mean of
    the last short_rows changes alone, so that a burst of volatility widens the interval at once
    while a calm spell does not narrow it below the longer window's level. Floored at 0.1 % of
    the values' mean magnitude so that a flat stretch does not shrink an interval to nothing.
    numpy only: infer computes it per request."""
    rows = np.asarray(rows, np.float64)
    change = np.abs(np.diff(rows, axis=-1))
    scale = np.mean(change, axis=-1)
    if short_rows:
        scale = np.maximum(scale, np.mean(change[..., -short_rows:], axis=-1))
    return np.maximum(scale, 1e-3 * np.mean(np.abs(rows), axis=-1) + 1e-12)


def window_scales(series: np.ndarray, origins: np.ndarray, rows: int, short_rows: int = 0) -> np.ndarray:
    """recent_change of the `rows` + 1 values of `series` before each origin (fewer at its start)."""
    return np.array([recent_change(series[max(0, o - rows - 1):o], short_rows) for o in origins])


def conformal_half_widths(y_true: np.ndarray, y_pred: np.ndarray, levels: list[float]) -> list[list[float]]:
    """Split-conformal interval half-widths per level and horizon step, original units.

    From n held-out windows [n, steps]: at level a, the ceil((n+1)·a)-th smallest absolute
    residual of each step (the finite-sample conformal quantile; the largest residual when
    n is too small for the level), so that forecast ± half-width covers a new value with
    probability >= a when errors are exchangeable.
    """
    residuals = np.sort(np.abs(np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64)), axis=0)
    n = len(residuals)
    if n == 0:
        raise ValueError("no held-out windows to calibrate intervals on")
    return [residuals[min(n, math.ceil((n + 1) * level)) - 1].tolist() for level in levels]


def window_half_widths(intervals: dict, scales: np.ndarray) -> np.ndarray:
    """[levels, windows, steps]: a pointer's half-widths for each window (× its local scale when the
    intervals are scaled; `scales` [windows], e.g. ScoringFrame.window_scales)."""
    half = np.asarray(intervals["half_widths"], np.float64)[:, None, :]
    if intervals.get("scale_rows"):
        return half * np.asarray(scales, np.float64)[None, :, None]
    return np.repeat(half, len(scales), axis=1)


def conformal_intervals(truth: np.ndarray, forecast: np.ndarray, levels: list[float], series: np.ndarray,
                        scale_rows: int, short_scale_rows: int = 0) -> dict:
    """The intervals of a pointer (events.PredictionIntervals) from held-out windows that end the series
    (validation windows end the training split): conformal half-widths per level and step; with
    scale_rows, of the residuals divided by each window's local scale (window_scales), which infer
    computes per request from the history it is sent."""
    short_scale_rows = min(short_scale_rows, scale_rows)
    if scale_rows:
        origins = len(series) - truth.shape[1] - len(truth) + 1 + np.arange(len(truth))
        scales = window_scales(series, origins, scale_rows, short_scale_rows)[:, None]
        truth, forecast = truth / scales, forecast / scales
    return {"levels": levels, "half_widths": conformal_half_widths(truth, forecast, levels), "scale_rows": scale_rows,
            "short_scale_rows": short_scale_rows}
