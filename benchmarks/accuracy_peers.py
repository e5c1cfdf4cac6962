"""The peers a forecaster would pick, for benchmarks/accuracy.py: fitted once on the training
split, then run forward through the test split without ever being refitted on it.

A fitted peer answers `forecast(series, start, windows, horizon) -> [windows, horizon]`:
`series` is the training target followed by the test target, and window i forecasts
series[start+i : start+i+horizon] knowing series[:start+i] only (the actual values up to
its origin, as a served model gets them).

- MSTL + AutoETS (statsforecast): MSTL splits the training target into daily (and weekly)
  seasonal components and a trend + remainder, AutoETS (model "ZZN") is fitted on the
  latter. Forward through the test split nothing is re-estimated: each seasonal component
  goes on as MSTL.predict continues it (its last fitted cycle, repeated), and the ETS state
  (level, trend) is updated by statsforecast's own ETS recursion with the fitted parameters
  and initial state (`statsforecast.ets.forward_ets`, what AutoETS.forward runs) over the
  deseasonalised train + test series. Window i starts from the state after its origin's
  last observation; its k-step forecast is level + trend term(k) + the seasonal value.
- LightGBM on target lags 1..K before the origin, the target row's lags of one day and one
  week (each ±1 step; the week only when the training split holds two weeks) and the
  calendar (hour, weekday) of the target row, fitted once on train per horizon. The scheme
  is direct multi-horizon: one model of every step, the step being a feature, trained on
  (origin, step) pairs of the training split (all of them, or 200,000 drawn at random), a
  seasonal lag that falls after the origin left missing. For h = 1 it is the plain direct
  one-step model. (A recursive scheme, each forecast fed back as the next step's lag 1,
  diverged on ElBorn at 720 steps: NRMSE 1.63, against 0.84 direct.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

SHORT_LAGS = 12  # K: the last 24 minutes on the LTE grid, half a day on an hourly one


# ---------------------------------------------------------------- MSTL + ETS

class MstlEts:
    name = "MSTL+ETS"

    def __init__(self, periods: list[int]):
        self.periods = sorted(periods)

    @property
    def label(self) -> str:
        return f"MSTL({','.join(map(str, self.periods))})+ETS"

    def fit(self, train: np.ndarray) -> MstlEts:
        from statsforecast.models import MSTL, AutoETS

        # statsmodels' STL evaluates its loess at every point by default; R's stl jumps a tenth
        # of the window. On a 5040-step week that is 2 s instead of 2 minutes.
        jump = max(1, self.periods[0] // 10)
        self.model = MSTL(season_length=self.periods, trend_forecaster=AutoETS(model="ZZN"),
                          stl_kwargs={"trend_jump": jump, "low_pass_jump": jump}).fit(train.astype(np.float64))
        self.train_rows = len(train)
        return self

    @property
    def components(self) -> str:
        return self.model.trend_forecaster.model_["components"]

    def seasonal(self, rows: int) -> np.ndarray:
        """The seasonal part of `rows` rows from the start of training: fitted, then continued."""
        ahead = rows - self.train_rows
        fitted = self.model.model_.filter(regex="^seasonal").sum(axis=1).to_numpy()
        if ahead <= 0:
            return fitted[:rows]
        # MSTL's forecast minus its trend forecaster's: the seasonal continuation, by public calls only.
        continued = self.model.predict(ahead)["mean"] - self.model.trend_forecaster.predict(ahead)["mean"]
        return np.concatenate([fitted, continued])

    def forecast(self, series: np.ndarray, start: int, windows: int, horizon: int) -> np.ndarray:
        from statsforecast.ets import forward_ets

        seasonal = self.seasonal(len(series))
        states = forward_ets(self.model.trend_forecaster.model_, series - seasonal)["states"]
        origins = start + np.arange(windows)  # states[t]: after observing series[:t]
        level = states[origins, 0][:, None]
        trend = states[origins, 1][:, None] * self.trend_steps(horizon) if states.shape[1] > 1 else 0.0
        return level + trend + seasonal[origins[:, None] + np.arange(horizon)]

    def trend_steps(self, horizon: int) -> np.ndarray:
        """How many times the trend counts k = 1..horizon steps ahead (damped: phi + ... + phi^k)."""
        error, trend, _, damped = self.components
        if trend != "A":
            raise ValueError(f"ETS trend {trend!r} is not supported here (additive or none)")
        phi = self.model.trend_forecaster.model_["par"][3] if damped == "D" else 1.0
        return np.cumsum(phi ** np.arange(1, horizon + 1))[None, :]


# ---------------------------------------------------------------- LightGBM on lags

class LagBoost:
    """One direct LightGBM model of every step 1..horizon (the step is a feature), fitted on
    (origin, step) pairs of the training split: the lags are what is known at the origin."""

    name = "LightGBM"

    def __init__(self, day: int, week: int | None, horizon: int, rounds: int = 300, samples: int = 200_000):
        self.seasons = [day] + ([week] if week else [])
        self.first_origin = max(self.seasons) + 1  # the oldest lag of the first origin is row 0
        self.horizon, self.rounds, self.samples = horizon, rounds, samples

    @property
    def label(self) -> str:
        return f"LightGBM lags 1-{SHORT_LAGS},{','.join(f'{s}±1' for s in self.seasons)}"

    def features(self, series: np.ndarray, calendar: np.ndarray, origins: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """[pairs, features]: lags 1..K before the origin; the target row's seasonal lags (±1),
        missing when they fall after the origin; the step; the target row's hour and weekday."""
        targets = origins + steps - 1
        recent = [series[origins - lag] for lag in range(1, SHORT_LAGS + 1)]
        seasonal = []
        for lag in (s + d for s in self.seasons for d in (1, 0, -1)):
            known = targets - lag < origins
            seasonal.append(np.where(known, series[np.where(known, targets - lag, 0)], np.nan))
        return np.column_stack(recent + seasonal + [steps, calendar[targets]])

    def training_pairs(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (origin, step) whose target lies in the training split, or a random `samples` of them."""
        per_step = rows - self.first_origin - np.arange(self.horizon)  # origins first_origin .. rows-step
        if per_step.min() < 10 * SHORT_LAGS:
            raise ValueError(f"{rows} training rows are too few for lags up to {self.first_origin} and "
                             f"{self.horizon} steps")
        if per_step.sum() <= self.samples:
            steps = np.repeat(np.arange(1, self.horizon + 1), per_step)
            return np.concatenate([np.arange(self.first_origin, self.first_origin + n) for n in per_step]), steps
        rng = np.random.default_rng(0)
        steps = rng.integers(1, self.horizon + 1, self.samples)
        return rng.integers(self.first_origin, rows - steps + 1), steps

    def fit(self, train: np.ndarray, times: pd.Series) -> LagBoost:
        import lightgbm as lgb

        origins, steps = self.training_pairs(len(train))
        features = self.features(train, calendar_features(times), origins, steps)
        # One thread: OpenMP threads spin-wait, and on a busy two-core machine two of them were 50x slower.
        params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
                  "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "num_threads": 1,
                  "seed": 0, "verbose": -1}
        self.booster = lgb.train(params, lgb.Dataset(features, train[origins + steps - 1]),
                                 num_boost_round=self.rounds)
        return self

    def forecast(self, series: np.ndarray, times: pd.Series, start: int, windows: int,
                 horizon: int) -> np.ndarray:
        if horizon != self.horizon:
            raise ValueError(f"fitted for {self.horizon} steps, asked for {horizon}")
        calendar = calendar_features(times)
        origins = start + np.arange(windows)
        pred = np.empty((windows, horizon))
        chunk = max(1, 200_000 // windows)  # steps per predict call: bounded memory
        for first in range(0, horizon, chunk):
            steps = np.arange(first, min(horizon, first + chunk)) + 1
            pairs = self.features(series, calendar, np.repeat(origins, len(steps)), np.tile(steps, windows))
            pred[:, first:first + len(steps)] = self.booster.predict(pairs, num_threads=1).reshape(windows, -1)
        return pred


def calendar_features(times: pd.Series) -> np.ndarray:
    """[rows, 2]: hour of day and weekday of each row."""
    times = pd.to_datetime(pd.Series(times)).reset_index(drop=True)
    return np.column_stack([times.dt.hour.to_numpy(), times.dt.day_of_week.to_numpy()]).astype(np.float64)
