"""Trainer settings: every knob is an environment variable (the deployment sets MODEL_TYPE).

The defaults were measured on the LTE data (PobleSec, ElBorn): a small one-layer RNN with
large batches beats the paper's LSTM there and trains in seconds on two cores.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from flts import forecasters
from flts.settings import DataColumns, Flag, Tracking, knob


class TrainSettings(DataColumns, Tracking):
    model_type: str = knob("MODEL_TYPE", "", f"the model family this deployment trains, one of "
                                             f"{', '.join(forecasters.names())} (set per deployment)")
    input_seq_len: int = knob("INPUT_SEQ_LEN", 10, "rows in one input window", ge=1)
    output_seq_len: int = knob("HORIZON", 1, "steps ahead one forecast covers (every step is returned)", ge=1)
    hidden_size: int = knob("HIDDEN_SIZE", 32, "GRU/LSTM: units per recurrent layer", ge=1)
    num_layers: int = knob("NUM_LAYERS", 1, "GRU/LSTM: recurrent layers", ge=1)
    dropout: float = knob("DROPOUT", 0.0, "GRU/LSTM: dropout between recurrent layers", ge=0, lt=1)
    # A cap, not the stopping rule: early stopping on validation ends a run first. Measured with
    # PATIENCE=10: best epochs 7-9 on PobleSec, 30 (GRU) and 51 (LSTM) on ElBorn, where the
    # old cap of 60 bound the LSTM; it also bound on half-hourly demand data.
    epochs: int = knob("EPOCHS", 300, "GRU/LSTM: passes over the training windows at most; early stopping "
                                      "(PATIENCE) normally ends a run first", ge=1)
    batch_size: int = knob("BATCH_SIZE", 256, "GRU/LSTM: windows per optimiser step", ge=1)
    learning_rate: float = knob("LEARNING_RATE", 5e-4, "GRU/LSTM: Adam's learning rate", gt=0)
    weight_decay: float = knob("WEIGHT_DECAY", 0.0, "GRU/LSTM: L2 weight decay", ge=0)
    loss: Literal["mse", "huber"] = knob("LOSS", "mse", "GRU/LSTM: training loss")
    patience: int = knob("PATIENCE", 10, "GRU/LSTM: epochs without a better validation loss before stopping", ge=1)
    val_fraction: float = knob("VAL_FRACTION", 0.1, "GRU/LSTM: last fraction of the training split for validation",
                               gt=0, lt=1)
    seed: int = knob("SEED", 0, "GRU/LSTM: random seed", ge=0)
    # One thread: with these small matrices, two threads spend more time synchronising than
    # computing (measured: a GRU epoch on PobleSec 0.2 s with 1 thread, 2-3 s with 2 on a busy box).
    torch_threads: int = knob("TORCH_THREADS", 1, "GRU/LSTM: torch threads", ge=1)
    onnx_opset: int = knob("ONNX_OPSET", 17, "GRU/LSTM: ONNX opset of the exported model", ge=17)
    parity_tolerance: float = knob("PARITY_TOLERANCE", 1e-3,
                                   "GRU/LSTM: max |onnx - torch| allowed, as a fraction of the target's std", gt=0)
    prophet_max_rows: int = knob("PROPHET_MAX_ROWS", 0, "PROPHET: fit on the last N training rows; 0 = all", ge=0)
    skip_duplicates: Flag = knob("SKIP_DUPLICATE_CONFIGS", True,
                                 "skip training when a finished run of this type and config hash exists")
    artifact_root: str = knob("MLFLOW_ARTIFACT_ROOT", "",
                              "artifact location of experiments this trainer creates; empty = the server's")

    @field_validator("model_type")
    @classmethod
    def _registered_family(cls, model_type: str) -> str:
        return forecasters.family(model_type).name  # UnknownModelType (a ConfigError) names the families

    @field_validator("loss", mode="before")
    @classmethod
    def _lower_case(cls, loss: Any) -> Any:
        return loss.lower() if isinstance(loss, str) else loss

    def hyperparameters(self) -> dict:
        """What a run logs as params: the window, and the knobs this MODEL_TYPE's family reads."""
        common = ("target", "timestamp_column", "input_seq_len", "output_seq_len")
        names = (*common, *forecasters.family(self.model_type).hyperparameters)
        values = self.model_dump()
        return {name: values[name] for name in names}
