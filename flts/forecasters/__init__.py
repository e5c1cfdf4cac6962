"""The registry of model families: training, scoring and serving look a MODEL_TYPE up here.

A family (GRU, LSTM, PROPHET, LGBM, MSTL) says how it is trained (`Family.module`: `fit`), which settings
it reads (logged as the run's params) and how its model is served: its ArtifactFormat, i.e.
the model file beside signature.json and the module that loads it for scoring (eval) and for
serving (infer). GRU, LSTM and LGBM share the ONNX format, so one loader serves them. The interface
the modules implement is described in flts.forecasters.base.

Adding a family: one module with `fit` (and, for a new format, the two loaders) plus its
entry in FAMILIES (and FORMATS). One trainer deployment per family follows from `names()`.

Importing this package stays light (no torch, onnxruntime, pandas, prophet, mlflow): the
routing table, the CLI and infer read it. Family and format modules are imported on use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flts.forecasters.base import ArtifactError, Fitted
from flts.settings import ConfigError

if TYPE_CHECKING:
    from flts.forecasters.base import Predictor, ScoringModel
    from flts.infer.features import InputSpec
    from flts.infer.settings import ServingSettings
    from flts.train.data import TrainData
    from flts.train.settings import TrainSettings


SIGNATURE = "signature.json"  # beside every model file: what goes in and out (train writes it)


@dataclass(frozen=True)
class ArtifactFormat:
    """How a model is stored and loaded: signature.json's "format", the pointer's artifact_format."""

    name: str
    model_file: str  # the model file beside SIGNATURE, <MODEL_TYPE>/<model_file>
    module: str  # dotted path: load_for_scoring, load_for_serving (imported on use)
    platform: str  # the Open Inference Protocol's metadata "platform"
    takes_features: bool  # the model reads the feature window (signature lists feature_columns), not only timestamps

    def load_for_scoring(self, path: Path, signature: dict) -> ScoringModel:
        return importlib.import_module(self.module).load_for_scoring(path, signature)

    def load_for_serving(self, raw: bytes, spec: InputSpec, settings: ServingSettings) -> Predictor:
        return importlib.import_module(self.module).load_for_serving(raw, spec, settings)


@dataclass(frozen=True)
class Family:
    """One MODEL_TYPE: a trainer deployment, its artifact format and the settings it reads."""

    name: str  # the MODEL_TYPE
    format: ArtifactFormat
    module: str  # dotted path: fit (imported on use; may import torch or prophet)
    hyperparameters: tuple[str, ...]  # TrainSettings fields it reads besides the window, logged as params

    @property
    def model_file(self) -> str:
        return self.format.model_file

    def fit(self, settings: TrainSettings, split: TrainData, folder: Path, label: str) -> Fitted:
        """Train on the split and forecast its test windows with the model as served; `label`
        names the run in what the family draws (plots into `folder`)."""
        return importlib.import_module(self.module).fit(settings, split, folder, label)


class UnknownModelType(ConfigError):
    """MODEL_TYPE names no registered family."""


ONNX = ArtifactFormat("onnx", "model.onnx", "flts.forecasters.onnx", platform="onnxruntime_onnx",
                      takes_features=True)
PROPHET_JSON = ArtifactFormat("prophet-json", "model.json", "flts.forecasters.prophet", platform="prophet",
                              takes_features=False)
# Seasonal profiles + ETS weights, evaluated with numpy (flts.forecasters.mstl): reads the target only.
MSTL_JSON = ArtifactFormat("mstl-json", "model.json", "flts.forecasters.mstl", platform="numpy", takes_features=True)
# The mean of several families' models, built by eval (flts.eval.ensemble), members embedded.
ENSEMBLE_JSON = ArtifactFormat("ensemble-json", "model.json", "flts.forecasters.ensemble", platform="ensemble",
                               takes_features=True)
FORMATS: tuple[ArtifactFormat, ...] = (ONNX, PROPHET_JSON, MSTL_JSON, ENSEMBLE_JSON)

RNN_SETTINGS = ("val_fraction", "seed", "hidden_size", "num_layers", "dropout", "epochs", "batch_size",
                "learning_rate", "weight_decay", "loss", "patience", "torch_threads", "onnx_opset", "parity_tolerance")

LGBM_SETTINGS = ("val_fraction", "seed", "parity_tolerance", "lgbm_short_lags", "lgbm_seasons", "lgbm_level_rows",
                 "lgbm_max_window", "lgbm_num_leaves", "lgbm_min_data_in_leaf", "lgbm_learning_rate",
                 "lgbm_n_estimators", "lgbm_early_stopping_rounds", "lgbm_refit", "lgbm_threads")

FAMILIES: tuple[Family, ...] = (
    Family("GRU", ONNX, "flts.forecasters.rnn", RNN_SETTINGS),
    Family("LSTM", ONNX, "flts.forecasters.rnn", RNN_SETTINGS),
    Family("PROPHET", PROPHET_JSON, "flts.forecasters.prophet", ("prophet_max_rows", "val_fraction")),
    # Trees on lags, their features computed inside the ONNX graph: served like GRU/LSTM.
    Family("LGBM", ONNX, "flts.forecasters.lgbm", LGBM_SETTINGS),
    # statsforecast's MSTL + AutoETS, served as a matrix and seasonal profiles (no statsforecast in infer).
    Family("MSTL", MSTL_JSON, "flts.forecasters.mstl", ("val_fraction", "mstl_seasons", "mstl_max_window")),
)


def names() -> tuple[str, ...]:
    """Every registered MODEL_TYPE, in registry order (one trainer deployment each)."""
    return tuple(f.name for f in FAMILIES)


def family(model_type: str) -> Family:
    """The family of a MODEL_TYPE (any case); UnknownModelType names the known ones."""
    found = {f.name: f for f in FAMILIES}.get(model_type.strip().upper())
    if found is None:
        raise UnknownModelType(f"MODEL_TYPE must be one of {list(names())}, got {model_type!r}")
    return found


def artifact_format(name: str) -> ArtifactFormat:
    """The format of a signature or pointer; ArtifactError names the known ones."""
    found = {f.name: f for f in FORMATS}.get(name)
    if found is None:
        raise ArtifactError(f"unknown artifact format {name!r} (known: {sorted(f.name for f in FORMATS)})")
    return found


__all__ = ["ArtifactError", "ArtifactFormat", "FAMILIES", "FORMATS", "Family", "Fitted", "SIGNATURE", "UnknownModelType",
           "artifact_format", "family", "names"]
