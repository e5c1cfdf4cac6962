"""Forecast vs actual with the prediction intervals: eval logs one per promotion to the
promoted MLflow run (`plots/forecast_vs_actual.png`); benchmarks/accuracy.py draws the same
panels per dataset. matplotlib is imported on use (never on infer's path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

PLOT_FILE = "forecast_vs_actual.png"


def draw_forecast(ax, times, actual: np.ndarray, forecast: np.ndarray, bands: list, label: str) -> None:
    """One panel: the actual values, the forecast, and a band per interval level.

    actual/forecast [rows]: one forecast step of consecutive windows; bands: (level, half-width
    [rows] of that step, flts.intervals.window_half_widths)."""
    ax.plot(times, actual, color="black", lw=1.0, label="actual")
    ax.plot(times, forecast, color="tab:blue", lw=1.0, label=label)
    for level, half in sorted(bands, key=lambda band: band[0], reverse=True):
        ax.fill_between(times, forecast - half, forecast + half, color="tab:blue", alpha=0.12 + 0.1 * (level < 0.9),
                        lw=0, label=f"{level:.0%} interval")
    ax.legend(fontsize=8, loc="upper left")


def save_forecast_plot(path: Path, times, actual: np.ndarray, forecast: np.ndarray, bands: list,
                       label: str, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    draw_forecast(ax, times, actual, forecast, bands, label)
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
