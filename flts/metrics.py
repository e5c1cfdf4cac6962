"""Comparable metrics (docs/design.md principle 4).

Every model is scored on the same held-out test windows with the same target scaler
(mean/std of the training split's target): score = 0.5·rmse + 0.3·mae + 0.2·mse on the
scaled target, lowest wins. Original-unit RMSE/MAE, NRMSE (= RMSE / mean(y)) and MASE
(MAE / MAE of one-step persistence on the training target) are reported beside it.
"""
from __future__ import annotations

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
