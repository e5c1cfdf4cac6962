"""Prediction intervals: split-conformal half-widths per level and horizon step, calibrated on the
validation windows that end the training split (docs/design.md, "Intervals are calibrated").

A model that reads its target gets *normalised* intervals: each validation residual is divided
by its window's scale, and infer multiplies the half-widths by the same scale of the history a
request sends, so an interval widens where the series is rough. Two scalings compete:

- recent (`scale_rows`): one number per window, the mean |one-step change| of the last values.
  One step ahead, the present volatility is what the next error follows.
- seasonal (`season_rows`): one number per horizon step, the mean |one-step change| around that
  step's time of day on each of the last `season_days` days. A day ahead, a step's error follows
  the volatility usual at its time of day, not the last few hours' (ElBorn day-ahead: the
  recent scale, calibrated on one half of the validation windows, covered 0.34 of the other
  half at 80 %; the seasonal one 0.75).

conformal_intervals keeps the candidate whose half-widths, calibrated on the first half of the
validation windows, cover the second half closest to their levels. numpy only: infer computes
the scales per request.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

SEASON_SECONDS = 86_400  # the seasonal scaling's period: one day
SEASON_WIDTH_SECONDS = 3_600  # the changes it averages lie within an hour of the step's time of day


def recent_change(rows: np.ndarray, short_rows: int = 0) -> np.ndarray:
    """The recent scale: the mean absolute one-step change of the last axis ([..., K+1] target
    values → [...]); with short_rows, the larger of that and the mean of the last short_rows
    changes alone, so that a burst of volatility widens the interval at once while a calm spell
    does not narrow it below the longer window's level."""
    rows = np.asarray(rows, np.float64)
    change = np.abs(np.diff(rows, axis=-1))
    scale = np.mean(change, axis=-1)
    if short_rows:
        scale = np.maximum(scale, np.mean(change[..., -short_rows:], axis=-1))
    return _floored(scale, rows)


def _floored(scale: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """At least 0.1 % of the values' mean magnitude, so that a flat stretch does not shrink an
    interval to nothing."""
    return np.maximum(scale, 1e-3 * np.mean(np.abs(rows), axis=-1, keepdims=scale.ndim == rows.ndim) + 1e-12)


def _days_back(steps: int, period: int, width: int) -> np.ndarray:
    """[steps]: the fewest periods back from each step's target row whose changes within ±width
    rows all lie before the origin."""
    return np.ceil((np.arange(steps) + width + 1) / period).astype(np.int64)


def seasonal_history_rows(steps: int, period: int, width: int, days: int = 1) -> int:
    """Rows before the origin that seasonal_change reads for `days` days at every step."""
    h = np.arange(steps)
    return int(np.max((_days_back(steps, period, width) + days - 1) * period - h + width + 1))


def seasonal_change(history: np.ndarray, steps: int, period: int, days: int, width: int) -> np.ndarray:
    """The seasonal scale: [..., L] target values before the origin → [..., steps], for step h
    the mean |one-step change| within ±width rows of the row `period` (a day) before its
    target row, averaged over up to `days` such days that the history holds. A step that the
    history reaches on no day takes the mean change of the whole history."""
    history = np.asarray(history, np.float64)
    length = history.shape[-1]
    change = np.abs(np.diff(history, axis=-1))
    cum = np.concatenate([np.zeros((*history.shape[:-1], 1)), np.cumsum(change, axis=-1)], axis=-1)
    # rows[j, h]: step h's time of day, j + first days back; its changes are cum[row + w] - cum[row - w - 1]
    rows = length + np.arange(steps) - (_days_back(steps, period, width) + np.arange(days)[:, None]) * period
    held = rows - width - 1 >= 0
    safe = np.where(held, rows, width + 1)
    sums = np.where(held, cum[..., safe + width] - cum[..., safe - width - 1], 0.0)  # [..., days, steps]
    counted = held.sum(axis=0)
    scale = sums.sum(axis=-2) / (np.maximum(counted, 1) * (2 * width + 1))
    if not counted.all():
        whole = np.mean(change, axis=-1, keepdims=True) if length > 1 else np.zeros((*history.shape[:-1], 1))
        scale = np.where(counted > 0, scale, whole)
    return _floored(scale, history)


@dataclass(frozen=True)
class IntervalScaling:
    """How a window's half-widths scale (the pointer's `intervals` carry these fields): by the
    recent scale when scale_rows > 0, by the seasonal one when season_rows > 0, not at all
    (fixed widths, in the target's units) when both are 0."""

    scale_rows: int = 0
    short_scale_rows: int = 0
    season_rows: int = 0  # the season's period in rows (one day)
    season_days: int = 0
    season_width: int = 0

    @classmethod
    def of(cls, intervals: Mapping | None) -> IntervalScaling:
        """The scaling of a pointer's (or signature's) intervals; older ones lack the season fields."""
        return cls(**{f.name: int((intervals or {}).get(f.name) or 0) for f in fields(cls)})

    @classmethod
    def recent(cls, rows: int, short_rows: int) -> IntervalScaling:
        return cls(scale_rows=rows, short_scale_rows=min(short_rows, rows)) if rows else cls()

    @classmethod
    def daily(cls, frequency_seconds: float | None, days: int) -> IntervalScaling | None:
        """The seasonal scaling for a grid step, or None when a day is not a whole number (≥ 2) of steps."""
        if not frequency_seconds or days < 1:
            return None
        period = SEASON_SECONDS / frequency_seconds
        if period < 2 or abs(period - round(period)) > 1e-6:
            return None
        width = max(1, round(SEASON_WIDTH_SECONDS / frequency_seconds))
        return cls(season_rows=round(period), season_days=days, season_width=min(width, round(period) // 2))

    @property
    def scaled(self) -> bool:
        return bool(self.season_rows or self.scale_rows)

    def history_rows(self, steps: int) -> int:
        """The fewest target rows before the origin that give every step its scale: the recent
        window, or one day at every step (more days, up to season_days, are used when sent)."""
        if self.season_rows:
            return seasonal_history_rows(steps, self.season_rows, self.season_width)
        return self.scale_rows + 1 if self.scale_rows else 0

    def reach(self, steps: int) -> int:
        """The most target rows before the origin that the scale reads."""
        if self.season_rows:
            return seasonal_history_rows(steps, self.season_rows, self.season_width, self.season_days)
        return self.history_rows(steps)

    def scales(self, history: np.ndarray, steps: int) -> np.ndarray:
        """[..., steps]: what each step's half-width multiplies, for windows whose target values
        before the origin are `history` [..., L] (ones for fixed widths)."""
        history = np.asarray(history, np.float64)
        if self.season_rows:
            history = history[..., -self.reach(steps):]
            return seasonal_change(history, steps, self.season_rows, self.season_days, self.season_width)
        if self.scale_rows:
            scale = recent_change(history[..., -(self.scale_rows + 1):], self.short_scale_rows)
            return np.repeat(scale[..., None], steps, axis=-1)
        return np.ones((*history.shape[:-1], steps))


def window_scales(series: np.ndarray, origins: np.ndarray, scaling: IntervalScaling, steps: int) -> np.ndarray:
    """[windows, steps]: the scales of the windows whose first target rows are `origins` in `series`."""
    series = np.asarray(series, np.float64)
    reach = scaling.reach(steps)
    return np.array([scaling.scales(series[max(0, o - reach):o], steps) for o in origins]).reshape(len(origins), steps)


def conformal_half_widths(y_true: np.ndarray, y_pred: np.ndarray, levels: Sequence[float]) -> list[list[float]]:
    """Split-conformal interval half-widths per level and horizon step.

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


def window_half_widths(intervals: Mapping, scales: np.ndarray) -> np.ndarray:
    """[levels, windows, steps]: a pointer's half-widths for each window, × its scales [windows, steps]
    (window_scales; ones for fixed widths)."""
    half = np.asarray(intervals["half_widths"], np.float64)[:, None, :]
    return half * np.asarray(scales, np.float64)[None, :, :half.shape[-1]]


def coverage_miss(truth: np.ndarray, forecast: np.ndarray, levels: Sequence[float], scales: np.ndarray) -> float:
    """How far half-widths calibrated on the first half of the windows miss their levels on the
    second half (the sum over levels of |coverage - level|): a scaling's out-of-sample check."""
    half = len(truth) // 2
    if half < 1:
        return 0.0
    first = np.asarray(conformal_half_widths(truth[:half] / scales[:half], forecast[:half] / scales[:half], levels))
    inside = np.abs(truth[half:] - forecast[half:])[None] <= first[:, None, :] * scales[half:][None]
    return float(sum(abs(float(np.mean(cover)) - level) for cover, level in zip(inside, levels, strict=True)))


def conformal_intervals(truth: np.ndarray, forecast: np.ndarray, levels: Sequence[float], series: np.ndarray,
                        candidates: Sequence[IntervalScaling] = ()) -> dict:
    """The intervals of a pointer (events.PredictionIntervals) from held-out windows [n, steps] that
    end `series` (validation windows end the training split): conformal half-widths per level and
    step of the residuals divided by each window's scales, under the candidate scaling (fixed
    widths without one; a seasonal one only when the first window has a day of history) that misses
    its levels least out of sample (coverage_miss; the first on a tie)."""
    truth, forecast = np.asarray(truth, np.float64), np.asarray(forecast, np.float64)
    steps = truth.shape[1]
    origins = len(series) - steps - len(truth) + 1 + np.arange(len(truth))
    usable = [c for c in candidates if not c.season_rows or c.history_rows(steps) <= origins[0]] or [IntervalScaling()]
    scored = [(c, window_scales(series, origins, c, steps)) for c in dict.fromkeys(usable)]
    scaling, scales = min(scored, key=lambda cs: coverage_miss(truth, forecast, levels, cs[1]))
    return {"levels": list(levels), "half_widths": conformal_half_widths(truth / scales, forecast / scales, levels),
            **asdict(scaling)}
