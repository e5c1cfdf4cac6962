"""The interface every family module implements, and the small pieces its implementations share.

A family module (`Family.module`) provides

    fit(settings, split, folder, label) -> Fitted       train; extra files (plots) go into `folder`

and the module of an artifact format (`ArtifactFormat.module`) provides

    load_for_scoring(path, signature) -> ScoringModel    eval and the accuracy benchmark
    load_for_serving(raw, spec, settings) -> Predictor   infer; checks the model against `spec`

Loading raises ArtifactError with a message that names the problem; each caller adds which
run or artifact it was. Nothing heavy is imported here: infer reads this module too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


class ArtifactError(RuntimeError):
    """A serving artifact is missing, malformed or does not load; the message names it."""


@dataclass
class Fitted:
    """What a family's fit hands back to the trainer, which scores it and writes the run's files."""

    model_bytes: bytes  # the serving model file, <MODEL_TYPE>/<format's model_file>
    forecast: np.ndarray  # the SERVED model's forecasts of the test windows [windows, output_seq_len]
    truth: np.ndarray  # the test windows' targets, same shape
    scaler: Any  # StandardScaler of the training rows the family fitted on (scaler/ files)
    metrics: dict[str, float] = field(default_factory=dict)  # the family's own figures (train_seconds, ...)
    series: dict[str, list[float]] = field(default_factory=dict)  # per-epoch curves
    # (forecasts, truths) [windows, output_seq_len] of the validation windows (targets: the training
    # rows after the shared cut, flts.windows.validation_rows) by a model that never trained on them:
    # eval chooses the model to promote on these, and calibrates its intervals on their residuals.
    validation: tuple[np.ndarray, np.ndarray] | None = None
    input_seq_len: int | None = None  # the window the served model reads, when the family sets it (LGBM: its
    # largest lag); None = INPUT_SEQ_LEN
    feature_columns: list[str] | None = None  # the columns the served model reads, when fewer than all (MSTL:
    # the target); None = every feature column (or none, for a format that reads only timestamps)


class ScoringModel(Protocol):
    signature: dict

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        """(forecasts, truths) [windows, output_seq_len] of the windows whose first target row is
        `first_origin` and every row after it."""


class Predictor(Protocol):
    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        """x [batch, input_seq_len, n_features] raw values; last_wall/step [batch] seconds → [batch, output_seq_len]."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def require_columns(frame: pd.DataFrame, names: list[str]) -> list[str]:
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ArtifactError(f"the test data has no column(s) {missing} (columns: {list(frame.columns)})")
    return list(names)
