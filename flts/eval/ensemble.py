"""An ensemble candidate: the mean of the best k candidates, when it beats the best one on validation.

Every family logs its validation windows' forecasts (`<MODEL_TYPE>/validation.npz`, the same
target rows for all of them: flts.train.data.validation_rows). Ranked by their validation
score, the means of the best 2..ENSEMBLE_MAX_MEMBERS are scored on those windows; the best
mean, if better than the best single candidate, becomes one more candidate (an MLflow run
of type ENSEMBLE whose model file embeds its members, flts.forecasters.ensemble), with
conformal intervals from its own validation residuals and its test figures from the mean of
the members' test forecasts. Eval then chooses among all of them as usual, on validation.
Averaging is the robust choice where one validation tail is a noisy judge (measured on the
bike data, one step: GRU 0.195, LGBM 0.181, their mean 0.176).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flts.forecasters.base import first_line
from flts.intervals import IntervalScaling, conformal_intervals
from flts.logs import log
from flts.metrics import TargetScale, regression_metrics
from flts.train.artifacts import VALIDATION

MODEL_TYPE = "ENSEMBLE"
DEFAULT_LEVELS = (0.8, 0.95)


@dataclass
class Validation:
    forecast: np.ndarray  # [windows, horizon]
    truth: np.ndarray


@dataclass
class Choice:
    """The best mean: its members (indices into the candidates, best first) and its figures."""

    members: list[int]
    val_metrics: dict
    val_forecast: np.ndarray
    val_truth: np.ndarray


def read_validation(client, run_id: str, model_type: str, dst: Path) -> Validation | None:
    """A run's validation forecasts, or None when it has none (an older run) or they do not read."""
    try:
        path = client.download_artifacts(run_id, f"{model_type}/{VALIDATION}", str(dst))
        with np.load(path, allow_pickle=False) as data:
            return Validation(data["forecast"].astype(np.float64), data["truth"].astype(np.float64))
    except Exception as exc:  # noqa: BLE001 - MlflowException, OSError or a bad file: no ensemble with it
        log("ensemble_member_left_out", run_id=run_id, model_type=model_type, error=first_line(exc))
        return None


def best_mean(validations: list[Validation | None], scale: TargetScale, max_members: int) -> Choice | None:
    """The mean of the best k (by validation score) that beats the best single candidate, or None.
    Candidates without validation forecasts, or with other target rows than the first one's, are
    left out; every score here is computed from the forecasts, with one formula and one scale."""
    present = [i for i, v in enumerate(validations) if v is not None]
    if len(present) < 2:
        return None
    truth = validations[present[0]].truth
    scores = {i: regression_metrics(truth, validations[i].forecast, scale)["score"] for i in present
              if validations[i].truth.shape == truth.shape and np.allclose(validations[i].truth, truth, rtol=1e-5)}
    order = sorted(scores, key=scores.get)
    best: Choice | None = None
    threshold = min(scores.values())
    for k in range(2, min(max_members, len(order)) + 1):
        forecast = np.mean([validations[i].forecast for i in order[:k]], axis=0)
        metrics = regression_metrics(truth, forecast, scale)
        if metrics["score"] < (best.val_metrics["score"] if best else threshold):
            best = Choice(order[:k], metrics, forecast, truth)
    return best


def signature(members: list[dict], intervals: dict, config_hash: str) -> dict:
    """The ensemble's signature.json: the longest window, every member's columns."""
    from flts.forecasters.ensemble import FORMAT, union_columns

    first = members[0]
    return {"format": FORMAT, "feature_columns": union_columns(members), "target": first["target"],
            "timestamp_column": first.get("timestamp_column"), "frequency_seconds": first.get("frequency_seconds"),
            "input_seq_len": max(s["input_seq_len"] for s in members), "output_seq_len": first["output_seq_len"],
            "config_hash": config_hash, "model_type": MODEL_TYPE, "intervals": intervals,
            "members": [s["model_type"] for s in members]}


def intervals_of(choice: Choice, member_signatures: list[dict], train_target: np.ndarray) -> dict:
    """Conformal intervals of the mean's validation residuals, at the members' levels and scaled as
    one of them is (the ensemble reads the target whenever a member does), chosen as a trainer
    chooses among its scalings."""
    given = [s["intervals"] for s in member_signatures if s.get("intervals")]
    levels = given[0]["levels"] if given else list(DEFAULT_LEVELS)
    scalings = [scaling for scaling in map(IntervalScaling.of, given) if scaling.scaled]
    return conformal_intervals(choice.val_truth, choice.val_forecast, levels, train_target, scalings)


def val_metrics(choice: Choice) -> dict:
    """As a trainer reports them: `val_` prefixed, and the windows."""
    return {**{f"val_{k}": v for k, v in choice.val_metrics.items()}, "val_windows": len(choice.val_truth)}
