"""Trainer settings: every knob is an environment variable (the deployment sets MODEL_TYPE).

The defaults were measured on the LTE data (PobleSec, ElBorn): a small one-layer RNN with
large batches beats the paper's LSTM there and trains in seconds on two cores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from flts.settings import ConfigError, Env, env_bool, env_float, env_int, env_str

MODEL_TYPES = ("GRU", "LSTM", "PROPHET")
LOSSES = ("mse", "huber")


@dataclass(frozen=True)
class TrainSettings:
    model_type: str
    target: str = "down"
    timestamp_column: str = "time"
    input_seq_len: int = 10
    output_seq_len: int = 1
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    loss: str = "mse"
    patience: int = 5
    val_fraction: float = 0.1
    seed: int = 0
    # One thread: with these small matrices, two threads spend more time synchronising than
    # computing (measured: a GRU epoch on PobleSec 0.2 s with 1 thread, 2-3 s with 2 on a busy box).
    torch_threads: int = 1
    onnx_opset: int = 17
    parity_tolerance: float = 1e-3  # max |onnx - torch| allowed, as a fraction of the target's std
    prophet_max_rows: int = 0  # 0 = fit Prophet on the whole training split
    skip_duplicates: bool = True
    tracking_uri: str = ""
    experiment_name: str = ""
    artifact_root: str = ""

    @classmethod
    def from_env(cls, env: Env) -> TrainSettings:
        model_type = env_str(env, "MODEL_TYPE", "").strip().upper()
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"MODEL_TYPE must be one of {list(MODEL_TYPES)}, got {env.get('MODEL_TYPE')!r}")
        settings = cls(
            model_type=model_type,
            target=env_str(env, "TARGET_COLUMN", "down"),
            timestamp_column=env_str(env, "TIMESTAMP_COLUMN", "time"),
            input_seq_len=env_int(env, "INPUT_SEQ_LEN", 10, minimum=1),
            output_seq_len=env_int(env, "OUTPUT_SEQ_LEN", 1, minimum=1),
            hidden_size=env_int(env, "HIDDEN_SIZE", 32, minimum=1),
            num_layers=env_int(env, "NUM_LAYERS", 1, minimum=1),
            dropout=env_float(env, "DROPOUT", 0.0),
            epochs=env_int(env, "EPOCHS", 60, minimum=1),
            batch_size=env_int(env, "BATCH_SIZE", 256, minimum=1),
            learning_rate=env_float(env, "LEARNING_RATE", 5e-4),
            weight_decay=env_float(env, "WEIGHT_DECAY", 0.0),
            loss=env_str(env, "LOSS", "mse").lower(),
            patience=env_int(env, "PATIENCE", 5, minimum=1),
            val_fraction=env_float(env, "VAL_FRACTION", 0.1),
            seed=env_int(env, "SEED", 0, minimum=0),
            torch_threads=env_int(env, "TORCH_THREADS", 1, minimum=1),
            onnx_opset=env_int(env, "ONNX_OPSET", 17, minimum=17),
            parity_tolerance=env_float(env, "PARITY_TOLERANCE", 1e-3),
            prophet_max_rows=env_int(env, "PROPHET_MAX_ROWS", 0, minimum=0),
            skip_duplicates=env_bool(env, "SKIP_DUPLICATE_CONFIGS", True),
            tracking_uri=env_str(env, "MLFLOW_TRACKING_URI", ""),
            experiment_name=env_str(env, "MLFLOW_EXPERIMENT_NAME", ""),
            artifact_root=env_str(env, "MLFLOW_ARTIFACT_ROOT", ""),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"VAL_FRACTION must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"DROPOUT must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0:
            raise ConfigError(f"LEARNING_RATE must be positive, got {self.learning_rate}")
        if self.loss not in LOSSES:
            raise ConfigError(f"LOSS must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.parity_tolerance <= 0:
            raise ConfigError(f"PARITY_TOLERANCE must be positive, got {self.parity_tolerance}")

    def hyperparameters(self) -> dict:
        """What a run logs as params: the knobs that shape the model of this MODEL_TYPE."""
        common = ("target", "timestamp_column", "input_seq_len", "output_seq_len")
        if self.model_type == "PROPHET":
            names = (*common, "prophet_max_rows")
        else:
            names = (*common, "val_fraction", "seed", "hidden_size", "num_layers", "dropout", "epochs", "batch_size", "learning_rate",
                     "weight_decay", "loss", "patience", "torch_threads", "onnx_opset", "parity_tolerance")
        values = asdict(self)
        return {name: values[name] for name in names}
