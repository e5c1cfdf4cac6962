"""The files a training run logs (contract shared with eval and infer; keep the layout):

    <MODEL_TYPE>/<model file>               the serving model (the family's format: model.onnx, model.json)
    <MODEL_TYPE>/signature.json             what goes in and out
    <MODEL_TYPE>/validation.npz             the validation windows' forecasts and truths (eval's ensembles)
    scaler/scaler.pkl, scaler/scaler.json   feature scaling (pickle for compatibility only)
    plots/loss_curve.png                    GRU/LSTM
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import orjson

from flts.forecasters import SIGNATURE
from flts.forecasters.onnx import INPUT_NAME, OUTPUT_NAME
from flts.metrics import TargetScale

VALIDATION = "validation.npz"


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def signature(*, fmt: str, feature_columns: list[str], target: str, timestamp_column: str, input_seq_len: int,
              output_seq_len: int, frequency_seconds: float, config_hash: str, model_type: str) -> dict:
    return {
        "format": fmt,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "feature_columns": list(feature_columns),
        "target": target,
        "timestamp_column": timestamp_column,
        "input_seq_len": input_seq_len,
        "output_seq_len": output_seq_len,
        "frequency_seconds": frequency_seconds,
        "config_hash": config_hash,
        "model_type": model_type,
    }


def write_serving_model(folder: Path, model_file: str, model_bytes: bytes, signature: dict) -> None:
    """<MODEL_TYPE>/: the model file as it is served, and its signature."""
    folder.mkdir(parents=True)
    (folder / model_file).write_bytes(model_bytes)
    write_json(folder / SIGNATURE, signature)


def write_validation(folder: Path, forecast: np.ndarray, truth: np.ndarray) -> None:
    """<MODEL_TYPE>/validation.npz: the validation windows' forecasts and truths (read with allow_pickle=False)."""
    np.savez_compressed(folder / VALIDATION, forecast=np.asarray(forecast, np.float32), truth=np.asarray(truth, np.float32))


def fit_scaler(features: np.ndarray, columns: list[str]):
    """sklearn's StandardScaler on the fit part: mean_/scale_ (zero-variance columns get scale 1)."""
    import pandas as pd
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(pd.DataFrame(features, columns=columns))


def write_scaler(folder: Path, scaler, columns: list[str], target: str, target_scale: TargetScale) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaler.pkl").write_bytes(pickle.dumps(scaler))
    write_json(folder / "scaler.json", {
        "kind": "standard",
        "feature_columns": list(columns),
        "mean": [float(v) for v in scaler.mean_],
        "scale": [float(v) for v in scaler.scale_],
        "target": target,
        "target_mean": float(scaler.mean_[columns.index(target)]),
        "target_scale": float(scaler.scale_[columns.index(target)]),
        # The scale every model's score uses (training split's target; flts.metrics.TargetScale).
        "metric_target_scale": {"mean": target_scale.mean, "std": target_scale.std,
                                "naive_mae": target_scale.naive_mae},
    })


def write_loss_curve(path: Path, train_losses: list[float], val_losses: list[float], best_epoch: int, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = range(1, len(train_losses) + 1)
    axes.plot(epochs, train_losses, label="train")
    axes.plot(epochs, val_losses, label="validation")
    axes.axvline(best_epoch, color="grey", linestyle="--", label=f"restored (epoch {best_epoch})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (standardised target)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
