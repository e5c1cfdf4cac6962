"""The ONNX artifact format, shared by every family that exports a graph (GRU, LSTM).

The contract: input "input" float32 [batch, input_seq_len, n_features] of RAW feature values
in feature_columns order; output "forecast" float32 [batch, output_seq_len] in original
units. The scaling lives inside the graph, so nothing is unpickled to serve it.

numpy and onnxruntime only: this is infer's request path (no torch, pandas, mlflow, prophet).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flts.forecasters.base import ArtifactError, first_line, require_columns
from flts.windows import make_windows

if TYPE_CHECKING:
    import pandas as pd

    from flts.infer.features import InputSpec
    from flts.infer.settings import ServingSettings

INPUT_NAME = "input"
OUTPUT_NAME = "forecast"
BATCH = 4096  # windows per run when forecasting a whole test split


def open_session(model: bytes | Path, where: str, intra_op_threads: int = 1, inter_op_threads: int = 0):
    """An ONNX Runtime session on the CPU; ArtifactError (naming `where`) when the graph does not load.

    With intra_op=1 a run uses only its calling thread, so parallelism comes from infer's
    worker lanes/processes instead of ORT's spinning pool, which would fight the event loop.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise ArtifactError(f"{where} does not load in ONNX Runtime: {first_line(exc)}") from None


def forecast(session, x: np.ndarray, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME) -> np.ndarray:
    """The graph's forecasts of many windows, BATCH at a time."""
    return np.concatenate([session.run([output_name], {input_name: x[i:i + BATCH]})[0]
                           for i in range(0, len(x), BATCH)])


# ---------------------------------------------------------------- scoring (eval)

class OnnxForecaster:
    """Raw feature windows of a test frame in, forecasts in original units out."""

    def __init__(self, path: Path, signature: dict):
        self.session = open_session(path, path.name)
        self.signature = signature
        self.input_name = signature.get("input_name", INPUT_NAME)
        self.output_name = signature.get("output_name", OUTPUT_NAME)

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        sig = self.signature
        in_len, out_len = sig["input_seq_len"], sig["output_seq_len"]
        columns = require_columns(frame, sig["feature_columns"])
        rows = frame.iloc[first_origin - in_len:]
        x, y = make_windows(rows[columns].to_numpy(np.float32), rows[sig["target"]].to_numpy(np.float64),
                            in_len, out_len)
        pred = forecast(self.session, x, self.input_name, self.output_name).reshape(len(x), -1)
        if pred.shape[1] != out_len:
            raise ArtifactError(f"the graph answers {pred.shape[1]} steps, the signature says {out_len}")
        return pred, y


def load_for_scoring(path: Path, signature: dict) -> OnnxForecaster:
    return OnnxForecaster(path, signature)


# ---------------------------------------------------------------- serving (infer)

class OrtPredictor:
    def __init__(self, session):
        self.session = session

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def load_for_serving(raw: bytes, spec: InputSpec, settings: ServingSettings) -> OrtPredictor:
    session = open_session(raw, "the artifact", settings.ort_intra_op_threads, settings.ort_inter_op_threads)
    check_graph(session, spec)
    return OrtPredictor(session)


def check_graph(session, spec: InputSpec) -> None:
    """The graph's input and output names, and its input shape, against what the pointer says."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ArtifactError(f"the ONNX graph must have input {INPUT_NAME!r} and output {OUTPUT_NAME!r}; "
                            f"it has inputs {list(inputs)} and outputs {list(outputs)}")
    shape = inputs[INPUT_NAME].shape
    expected = [None, spec.input_seq_len, len(spec.feature_columns)]
    if len(shape) != 3 or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expected, strict=False)):
        raise ArtifactError(f"ONNX input shape {shape} does not match [batch, {spec.input_seq_len}, "
                            f"{len(spec.feature_columns)}] from the pointer")
