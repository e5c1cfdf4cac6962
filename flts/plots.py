"""Forecast vs actual with the prediction intervals: eval logs one per promotion to the
promoted MLflow run (`plots/forecast_vs_actual.png`); benchmarks/accuracy.py draws the same
panels per dataset. matplotlib is imported on use (never on infer's path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

PLOT_FILE = "forecast_vs_actual.png"


def draw_forecast(ax, times, actual: np.ndarray, forecast: np.ndarray, intervals: dict | None, label: str) -> None:
    """One panel: the actual values, the forecast, and a band per interval level (the step's half-width).

    actual/forecast [rows]: one forecast step of consecutive windows; intervals: the pointer's
    {"levels": [...], "half_widths": [[per step], ...]}, the half-width of this step taken (the last step's)."""
    ax.plot(times, actual, color="black", lw=1.0, label="actual")
    ax.plot(times, forecast, color="tab:blue", lw=1.0, label=label)
    if intervals:
        steps = len(intervals["half_widths"][0])
        for level, widths in sorted(zip(intervals["levels"], intervals["half_widths"], strict=True), reverse=True):
            half = widths[steps - 1]
            ax.fill_between(times, forecast - half, forecast + half, color="tab:blue", alpha=0.12 + 0.1 * (level < 0.9),
                            lw=0, label=f"{level:.0%} interval")
    ax.legend(fontsize=8, loc="upper left")


def save_forecast_plot(path: Path, times, actual: np.ndarray, forecast: np.ndarray, intervals: dict | None,
                       label: str, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    draw_forecast(ax, times, actual, forecast, intervals, label)
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
