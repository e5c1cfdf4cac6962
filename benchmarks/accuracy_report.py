"""Metrics, tables, targets, JSON and plots of benchmarks/accuracy.py.

Every row of a case (one dataset and horizon) is scored against the same truth: the same
target rows, all forecast steps pooled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flts.intervals import window_half_widths
from flts.metrics import TargetScale, regression_metrics
from flts.plots import draw_forecast

BETTER_BY = 0.05  # "clearly better": at least 5 % below the best peer's NRMSE
COVERAGE_TOLERANCE = 0.03  # interval coverage on the test windows: nominal ± 3 points
PLOT_DAYS = 3


@dataclass
class Row:
    name: str
    kind: str  # "promoted", "family" or "peer"
    forecast: np.ndarray | None = None  # [windows, horizon]; None: the model has no figure here
    note: str = ""  # why there is no figure
    model_type: str = ""  # promoted and family rows: the MODEL_TYPE
    metrics: dict = field(default_factory=dict)


@dataclass
class Case:
    dataset: str
    horizon: int
    horizon_label: str
    target: str
    truth: np.ndarray  # [windows, horizon]
    times: pd.Series  # timestamps of the last step's target rows, one per window
    scale: TargetScale
    facts: dict  # what the JSON and the table header say about the rows scored
    rows: list[Row] = field(default_factory=list)
    paper: dict | None = None  # LTE h = 1: NRMSE on the paper's windows, and the paper's figures
    bands: list | None = None  # the promoted model's intervals, per level its half-widths [windows, steps]

    def add(self, row: Row, intervals: dict | None = None, scales: np.ndarray | None = None) -> None:
        """A row and its metrics; with the pointer's intervals (and the windows' local scales, when
        the intervals are scaled), their coverage and width too."""
        if row.forecast is not None:
            row.metrics = score(self.truth, row.forecast, self.scale)
            if intervals:
                half = window_half_widths(intervals, scales)[:, :, :self.truth.shape[1]]
                row.metrics.update(interval_metrics(self.truth, row.forecast, intervals["levels"], half))
                self.bands = list(zip(intervals["levels"], half, strict=True))
        self.rows.append(row)

    @property
    def windows(self) -> int:
        return len(self.truth)

    def of_kind(self, kind: str) -> list[Row]:
        return [r for r in self.rows if r.kind == kind and r.metrics]

    @property
    def promoted(self) -> Row:
        return self.of_kind("promoted")[0]

    @property
    def best_peer(self) -> Row:
        return min(self.of_kind("peer"), key=lambda r: r.metrics["nrmse"])

    def rank_against_peers(self) -> None:
        best = self.best_peer.metrics["nrmse"]
        for row in self.rows:
            if row.metrics:
                row.metrics["ratio_to_best_peer"] = row.metrics["nrmse"] / best


def score(truth: np.ndarray, forecast: np.ndarray, scale: TargetScale) -> dict:
    """NRMSE, MASE (flts.metrics: MAE / in-sample one-step persistence MAE of the training target),
    MAPE over the non-zero targets; interval figures only for a model that gives intervals."""
    metrics = regression_metrics(truth, forecast, scale)
    return {"nrmse": metrics["nrmse"], "mase": metrics["mase"], "mape": mape(truth, forecast),
            "rmse": metrics["rmse_orig"], "mae": metrics["mae_orig"],
            "interval_levels": None, "interval_coverage": None, "interval_width": None}


def interval_metrics(truth: np.ndarray, forecast: np.ndarray, levels: list[float], half: np.ndarray) -> dict:
    """Per level (forecast ± half [levels, windows, steps]): the share of targets inside, and the
    mean width relative to mean(y)."""
    inside = np.abs(truth - forecast)[None, :, :] <= half
    return {"interval_levels": list(levels),
            "interval_coverage": inside.mean(axis=(1, 2)).tolist(),
            "interval_width": (2 * half.mean(axis=(1, 2)) / truth.mean()).tolist()}


def mape(truth: np.ndarray, forecast: np.ndarray) -> float:
    """Mean absolute percentage error in %, over the targets that are not zero (no percentage of zero)."""
    nonzero = truth != 0
    if not nonzero.any():
        return math.nan
    return float(np.mean(np.abs(forecast[nonzero] - truth[nonzero]) / np.abs(truth[nonzero])) * 100)


# ---------------------------------------------------------------- table

def print_case(case: Case) -> None:
    f = case.facts
    print(f"\n{case.dataset}, h = {case.horizon_label}: target {case.target!r}, {f['windows']} windows whose "
          f"targets cover test rows {f['first_scored_test_row']}-{f['test_rows'] - 1} "
          f"(lookback of {f['lookback_rows']} training rows); all {case.horizon} step(s) pooled; "
          f"MAPE skips {f['zero_targets']} zero target(s)")
    print(f"  {'model':<40} {'NRMSE':>7} {'MASE':>7} {'MAPE %':>8} {'/best peer':>10} {'cover':>6} {'width':>6}")
    for row in case.rows:
        label = f"{row.kind if row.kind == 'peer' else ''} {row.name}".strip()
        if not row.metrics:
            print(f"  {label:<40} {row.note}")
            continue
        m = row.metrics
        print(f"  {label:<40} {m['nrmse']:7.4f} {m['mase']:7.3f} {m['mape']:8.2f} {m['ratio_to_best_peer']:10.3f}"
              f" {_last(m['interval_coverage']):>6} {_last(m['interval_width']):>6}")
    levels = next((r.metrics["interval_levels"] for r in case.rows if r.metrics.get("interval_levels")), None)
    note = (f"at level {levels[-1]:.0%}: cover = share of targets inside, width = mean width / mean(y)" if levels
            else "n/a: no model gives any")
    print(f"  intervals {note}")
    if case.paper:
        print_paper(case.paper)


def _last(values: list[float] | None) -> str:
    return "n/a" if not values else f"{values[-1]:.3f}"


def print_paper(paper: dict) -> None:
    print(f"  paper windows ({paper['windows']}: the test file alone, targets from its row {paper['first_target_row']}),"
          f" NRMSE h = 1:")
    ours = ", ".join(f"{name}{'*' if name in paper['inputs_before_the_test_file'] else ''} {value:.4f}"
                     for name, value in paper["nrmse"].items())
    print(f"    {ours}")
    print("    (* inputs reach back before the test file: read from the training tail)")
    print(f"    paper: LSTM FedNova {paper['published']['lstm_fednova']:.4f}, LSTM FedAvg "
          f"{paper['published']['lstm_fedavg']:.4f}, persistence {paper['published']['persistence']:.4f}")


# ---------------------------------------------------------------- targets

def check_targets(cases: list[Case]) -> list[tuple[bool, str]]:
    checks = []
    better = 0
    for case in cases:
        promoted, peer = case.promoted, case.best_peer
        ratio = promoted.metrics["ratio_to_best_peer"]
        better += ratio <= 1 - BETTER_BY
        checks.append((ratio <= 1, f"{case.dataset} h={case.horizon}: {promoted.name} NRMSE "
                                   f"{promoted.metrics['nrmse']:.4f} vs best peer ({peer.name}) "
                                   f"{peer.metrics['nrmse']:.4f}: ratio {ratio:.3f} (no worse: <= 1)"))
    checks.append((2 * better >= len(cases), f"promoted at least {BETTER_BY:.0%} better than the best peer on "
                                             f"{better} of {len(cases)} dataset-horizons (at least half)"))
    for case in cases:
        metrics = case.promoted.metrics
        for level, cover in zip(metrics.get("interval_levels", []), metrics.get("interval_coverage", []), strict=True):
            checks.append((abs(cover - level) <= COVERAGE_TOLERANCE,
                           f"{case.dataset} h={case.horizon}: {level:.0%} interval covers {cover:.1%} of the test "
                           f"targets (within {COVERAGE_TOLERANCE * 100:g} points of nominal)"))
    for case in cases:
        if case.paper:
            ours, published = case.paper["nrmse"].get("promoted"), case.paper["published"]["lstm_fednova"]
            ok = ours is not None and ours < published
            checks.append((ok, f"{case.dataset} h=1 paper windows: promoted NRMSE "
                               f"{'n/a' if ours is None else f'{ours:.4f}'} vs the paper's final LSTM {published:.4f}"))
    return checks


def print_targets(checks: list[tuple[bool, str]]) -> None:
    print("\ntargets:")
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'MISS'} {text}")


# ---------------------------------------------------------------- JSON and plots

def case_json(case: Case) -> dict:
    rows = {r.name: {"kind": r.kind, **(r.metrics or {"note": r.note})} for r in case.rows}
    return {"dataset": case.dataset, "horizon": case.horizon, "horizon_label": case.horizon_label,
            "target": case.target, **case.facts, "promoted": case.promoted.name, "best_peer": case.best_peer.name,
            "rows": rows, "paper": case.paper}


def plot_dataset(cases: list[Case], path: Path, day_steps: int) -> None:
    """Forecast vs actual of the promoted model (and the best peer) over the last days of the
    test split, one panel per horizon: each target with the forecast made h steps before it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), 1, figsize=(12, 3.2 * len(cases)), squeeze=False)
    last = PLOT_DAYS * day_steps
    for ax, case in zip(axes[:, 0], cases, strict=True):
        times, promoted, peer = case.times.iloc[-last:], case.promoted, case.best_peer
        bands = [(level, half[-last:, -1]) for level, half in case.bands or []]
        draw_forecast(ax, times, case.truth[-last:, -1], promoted.forecast[-last:, -1], bands,
                      f"{promoted.name} (NRMSE, all steps: {promoted.metrics['nrmse']:.3f})")
        ax.plot(times, peer.forecast[-last:, -1], color="tab:orange", lw=0.8, ls="--",
                label=f"peer {peer.name} (NRMSE, all steps: {peer.metrics['nrmse']:.3f})")
        ax.set_title(f"{case.dataset}, h = {case.horizon_label}: {case.target}, forecast made {case.horizon} "
                     f"step(s) before each target", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
