"""MSTL: seasonal profiles plus exponential smoothing of the rest, fitted by statsforecast
(MSTL + AutoETS), served as a small JSON model evaluated with numpy ("mstl-json"): infer
imports neither statsforecast nor numba.

Fit: MSTL splits the training target into one seasonal component per period (MSTL_SEASONS
that the data spans twice) and a trend + remainder, on which AutoETS chooses an
additive-error model (no trend, additive or damped). The served model keeps what
MSTL.predict itself continues: each component's last fitted cycle, repeated, indexed by the
grid step counted from the first fitted row (in the clock of the processed data); and the
ETS smoothing parameters.

Serve a window of L rows: subtract the seasonal values at those rows, run the ETS recursion
over the rest from level = its first value and no trend, and add the seasonal values at the
forecast steps to the final level (+ trend). With additive errors the recursion is linear in
the window, so the model is one [L, horizon] matrix built at load time and a forecast is a
matmul. L: the rows after which the starting level weighs under 1 % (from alpha), within
[INPUT_SEQ_LEN, MSTL_MAX_WINDOW]; the window is the model's whole memory, so training scores
it exactly as served (validation by a second fit on the rows before the cut, like PROPHET).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from flts.forecasters.base import ArtifactError, Fitted, first_line, require_columns
from flts.windows import make_windows

if TYPE_CHECKING:
    import pandas as pd

    from flts.infer.features import InputSpec
    from flts.infer.settings import ServingSettings
    from flts.train.data import TrainData
    from flts.train.settings import TrainSettings

FORMAT_VERSION = 1
STARTING_WEIGHT = 0.01  # the window is long enough when the initial level weighs less than this


@dataclass(frozen=True)
class Smoothing:
    """ETS with additive errors: level, optionally a (damped) trend."""

    components: str  # statsforecast's: error, trend, season, damping ("AAdN" reads "A", "A", "N", "D")
    alpha: float
    beta: float = 0.0  # 0 without a trend
    phi: float = 1.0  # damping, 1 = none

    def window_rows(self, low: int, high: int) -> int:
        """Rows after which the starting level's weight (1 - alpha)^rows is under STARTING_WEIGHT."""
        if self.alpha >= 1 - 1e-9:
            needed = 2
        else:
            needed = math.ceil(math.log(STARTING_WEIGHT) / math.log(1 - self.alpha)) + 1
        return max(low, min(high, needed, 10**6))

    def weights(self, rows: int, horizon: int) -> np.ndarray:
        """[rows, horizon]: forecast = deseasonalised window @ weights. Each row of the state
        vectors holds its dependence on one window value (the recursion run on the identity)."""
        basis = np.eye(rows)
        level, trend = basis[0].copy(), np.zeros(rows)
        for t in range(1, rows):
            expected = level + self.phi * trend
            error = basis[t] - expected
            level = expected + self.alpha * error
            trend = self.phi * trend + self.beta * error
        trend_steps = np.cumsum(self.phi ** np.arange(1, horizon + 1))
        return level[:, None] + trend[:, None] * trend_steps[None, :]


@dataclass(frozen=True)
class MstlModel:
    """What model.json holds."""

    step_seconds: float  # the grid step
    anchor_seconds: float  # the first fitted row's time, seconds since 1970: step 0 of every profile
    periods: tuple[int, ...]  # in rows
    profiles: tuple[tuple[float, ...], ...]  # per period: the seasonal value at step % period
    smoothing: Smoothing
    input_seq_len: int
    horizon: int

    def to_json(self) -> bytes:
        return orjson.dumps({"format": "mstl-json", "version": FORMAT_VERSION, **asdict(self)},
                            option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> MstlModel:
        try:
            data = orjson.loads(raw)
            if data.get("format") != "mstl-json" or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}, "
                                 f"expected 'mstl-json' version {FORMAT_VERSION}")
            model = cls(float(data["step_seconds"]), float(data["anchor_seconds"]), tuple(map(int, data["periods"])),
                        tuple(tuple(map(float, p)) for p in data["profiles"]), Smoothing(**data["smoothing"]),
                        int(data["input_seq_len"]), int(data["horizon"]))
        except Exception as exc:  # noqa: BLE001 - any malformed field means the file is not ours
            raise ArtifactError(f"{where} is not an MSTL model JSON: {first_line(exc)}") from None
        if model.step_seconds <= 0 or [len(p) for p in model.profiles] != list(model.periods):
            raise ArtifactError(f"{where}: the step must be > 0 and each profile as long as its period")
        return model


class MstlPredictor:
    """The model as numpy arrays: forecasts of many windows at once."""

    def __init__(self, model: MstlModel, target_index: int = 0):
        self.model, self.target_index = model, target_index
        self.weights = model.smoothing.weights(model.input_seq_len, model.horizon)
        self.profiles = [np.asarray(p) for p in model.profiles]
        self.offsets = np.arange(1 - model.input_seq_len, model.horizon + 1)  # window rows, then forecast steps

    def seasonal(self, steps: np.ndarray) -> np.ndarray:
        return sum((p[steps % len(p)] for p in self.profiles), np.zeros(steps.shape))

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        """x [batch, L, n_features] (the target at target_index); last_wall [batch] the last row's time."""
        m = self.model
        last = np.rint((np.asarray(last_wall, np.float64) - m.anchor_seconds) / m.step_seconds).astype(np.int64)
        season = self.seasonal(last[:, None] + self.offsets[None, :])
        window = x[:, :, self.target_index].astype(np.float64) - season[:, :m.input_seq_len]
        return (window @ self.weights + season[:, m.input_seq_len:]).astype(np.float32)

    def forecast_rows(self, target: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(forecasts, truths) [windows, horizon] of every window of a series and its row times."""
        length, horizon = self.model.input_seq_len, self.model.horizon
        x, y = make_windows(target[:, None], target, length, horizon)
        return self.predict(x, seconds[length - 1:length - 1 + len(x)], np.zeros(len(x))), y


# ---------------------------------------------------------------- training

def fit(settings: TrainSettings, split: TrainData, folder: Path, label: str) -> Fitted:
    from flts.logs import log
    from flts.train.artifacts import fit_scaler
    from flts.train.data import held_out_rows, validation_rows

    train, horizon = split.train, settings.output_seq_len
    step = split.frequency_seconds()
    cut = len(train.target) - validation_rows(len(train.target), settings.input_seq_len, horizon,
                                              settings.val_fraction)
    periods = seasons(settings.mstl_seasons, step, cut)
    seconds = _seconds(train.times)
    started = time.perf_counter()
    before = fit_model(settings, train.target[:cut], seconds[:cut], step, periods)
    back = cut - before.input_seq_len
    validation = MstlPredictor(before).forecast_rows(train.target[back:], seconds[back:])
    model = fit_model(settings, train.target, seconds, step, periods)
    train_seconds = time.perf_counter() - started
    features, target, lookback = held_out_rows(split, model.input_seq_len, horizon)
    times = np.concatenate([seconds[len(seconds) - lookback:], _seconds(split.test.times)])
    forecast, truth = MstlPredictor(model).forecast_rows(target, times)
    log("train_fit_done", model_type="MSTL", label=label, periods=list(periods),
        ets=model.smoothing.components, alpha=round(model.smoothing.alpha, 4), input_seq_len=model.input_seq_len,
        seconds=round(train_seconds, 2))
    return Fitted(model.to_json(), forecast, truth, fit_scaler(train.features, split.feature_columns),
                  metrics={"train_seconds": train_seconds, "alpha": model.smoothing.alpha,
                           "test_lookback_rows": lookback},
                  validation=validation, input_seq_len=model.input_seq_len, feature_columns=[split.target])


def seasons(hours: tuple[float, ...], step_seconds: float, rows: int) -> tuple[int, ...]:
    """The periods in rows: each at least two rows, spanned twice by `rows`."""
    periods = {round(h * 3600 / step_seconds) for h in hours} if step_seconds > 0 else set()
    return tuple(sorted(p for p in periods if p >= 2 and rows >= 2 * p))


def fit_model(settings: TrainSettings, target: np.ndarray, seconds: np.ndarray, step: float,
              periods: tuple[int, ...]) -> MstlModel:
    from statsforecast.models import MSTL, AutoETS

    from flts.train.errors import TrainingError

    target = np.asarray(target, np.float64)
    ets = AutoETS(model="AZN")  # additive errors: the served recursion is linear (one matrix)
    try:
        if periods:
            # statsmodels' STL evaluates its loess at every point by default; R's stl jumps a tenth
            # of the window. On a 720-step day that is seconds instead of minutes.
            jump = max(1, periods[0] // 10)
            mstl = MSTL(season_length=list(periods), trend_forecaster=ets,
                        stl_kwargs={"trend_jump": jump, "low_pass_jump": jump}).fit(target)
            fitted, ets = mstl.model_, mstl.trend_forecaster
            components = fitted.filter(regex="^seasonal").to_numpy().T  # "seasonal" alone, or one per period
            profiles = tuple(_last_cycle(c, p) for c, p in zip(components, periods, strict=True))
        else:
            ets, profiles = ets.fit(target), ()
    except Exception as exc:  # noqa: BLE001 - statsforecast fails in many ways on degenerate series
        raise TrainingError(f"MSTL + ETS did not fit: {first_line(exc)}") from None
    smoothing = _smoothing(ets.model_)
    rows = smoothing.window_rows(settings.input_seq_len, settings.mstl_max_window)
    return MstlModel(step, float(seconds[0]), periods, profiles, smoothing, rows, settings.output_seq_len)


def _last_cycle(component: np.ndarray, period: int) -> tuple[float, ...]:
    """The component's last cycle, indexed by step % period (step 0 = the first fitted row)."""
    n = len(component)
    profile = np.empty(period)
    profile[np.arange(n - period, n) % period] = component[n - period:]
    return tuple(profile.tolist())


def _smoothing(fitted: dict) -> Smoothing:
    components, (alpha, beta, _, phi) = fitted["components"], fitted["par"][:4]
    trend, damped = components[1], components[3] == "D"
    return Smoothing(components, float(alpha), float(beta) if trend == "A" else 0.0, float(phi) if damped else 1.0)


def _seconds(times) -> np.ndarray:
    """datetime64 values → float seconds since 1970, as infer reads a request's timestamps."""
    return np.asarray(times, dtype="datetime64[us]").astype(np.int64) / 1e6


# ---------------------------------------------------------------- loading

class MstlForecaster:
    """Scoring (eval): the windows of a test frame, as served."""

    def __init__(self, path: Path, signature: dict):
        self.signature = signature
        self.predictor = MstlPredictor(MstlModel.from_json(path.read_bytes(), path.name))

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        sig = self.signature
        ts, target = require_columns(frame, [sig.get("timestamp_column") or "time", sig["target"]])
        rows = frame.iloc[first_origin - self.predictor.model.input_seq_len:]
        times = rows[ts].to_numpy()
        if getattr(rows[ts].dt, "tz", None) is not None:
            times = rows[ts].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        return self.predictor.forecast_rows(rows[target].to_numpy(np.float64), _seconds(times))


def load_for_scoring(path: Path, signature: dict) -> MstlForecaster:
    return MstlForecaster(path, signature)


def load_for_serving(raw: bytes, spec: InputSpec, settings: ServingSettings) -> MstlPredictor:
    model = MstlModel.from_json(raw, "the artifact")
    if (model.input_seq_len, model.horizon) != (spec.input_seq_len, spec.output_seq_len):
        raise ArtifactError(f"the MSTL model reads {model.input_seq_len} rows and forecasts {model.horizon} steps; "
                            f"the pointer says {spec.input_seq_len} and {spec.output_seq_len}")
    if spec.target not in spec.feature_columns:
        raise ArtifactError(f"the MSTL model reads the target {spec.target!r}, which is not among the feature columns")
    return MstlPredictor(model, spec.feature_columns.index(spec.target))
