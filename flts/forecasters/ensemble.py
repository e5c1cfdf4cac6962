"""ENSEMBLE: the mean of several families' forecasts, one self-contained file ("ensemble-json").

Eval builds it (flts.eval.ensemble) when the mean of the best candidates beats the best single
one on the validation windows; no trainer deployment trains it. model.json holds every member's
signature and its model file (base64), so one object is one model and a hot swap stays atomic.

The ensemble reads the longest member window and the union of the members' columns (its
signature says which); each member gets its own last rows and columns, is loaded by its own
format (ONNX Runtime, numpy, Prophet) and the forecasts are averaged. Nothing heavy is
imported here: the members' format modules are imported by their loaders.
"""
from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from flts.forecasters.base import ArtifactError, first_line

if TYPE_CHECKING:
    import pandas as pd

    from flts.forecasters.base import Predictor, ScoringModel
    from flts.infer.features import InputSpec
    from flts.infer.settings import ServingSettings

FORMAT = "ensemble-json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Member:
    model_type: str
    run_id: str
    signature: dict  # the member's own signature.json (format, window, columns)
    model: bytes  # its model file

    def to_json(self) -> dict:
        return {"model_type": self.model_type, "run_id": self.run_id, "signature": self.signature,
                "model": base64.b64encode(self.model).decode("ascii")}


def to_json(members: list[Member]) -> bytes:
    return orjson.dumps({"format": FORMAT, "version": FORMAT_VERSION, "members": [m.to_json() for m in members]})


def members_of(raw: bytes, where: str) -> list[Member]:
    try:
        data = orjson.loads(raw)
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}, expected {FORMAT!r} "
                             f"version {FORMAT_VERSION}")
        members = [Member(m["model_type"], m["run_id"], dict(m["signature"]), base64.b64decode(m["model"], validate=True))
                   for m in data["members"]]
    except Exception as exc:  # noqa: BLE001 - any malformed field means the file is not ours
        raise ArtifactError(f"{where} is not an ensemble model JSON: {first_line(exc)}") from None
    if len(members) < 2:
        raise ArtifactError(f"{where}: an ensemble needs at least two members, it has {len(members)}")
    if len({m.signature.get("output_seq_len") for m in members}) != 1:
        raise ArtifactError(f"{where}: the members forecast different horizons")
    return members


def union_columns(signatures: list[dict]) -> list[str]:
    """Every member's columns, each once, in the order they first appear."""
    return list(dict.fromkeys(c for s in signatures for c in s.get("feature_columns") or []))


def _format(member: Member):
    from flts import forecasters

    if member.signature.get("format") == FORMAT:
        raise ArtifactError("an ensemble member cannot be an ensemble")
    return forecasters.artifact_format(member.signature.get("format", ""))


# ---------------------------------------------------------------- scoring (eval, the benchmark)

class EnsembleForecaster:
    def __init__(self, path: Path, signature: dict):
        self.signature = signature
        self.folder = tempfile.TemporaryDirectory(prefix="flts-ensemble-")  # the members' files, while loaded
        self.members: list[ScoringModel] = []
        for i, member in enumerate(members_of(path.read_bytes(), path.name)):
            fmt = _format(member)
            member_path = Path(self.folder.name) / str(i) / fmt.model_file
            member_path.parent.mkdir()
            member_path.write_bytes(member.model)
            self.members.append(fmt.load_for_scoring(member_path, member.signature))

    def forecast(self, frame: pd.DataFrame, first_origin: int) -> tuple[np.ndarray, np.ndarray]:
        forecasts = [m.forecast(frame, first_origin) for m in self.members]
        return np.mean([f for f, _ in forecasts], axis=0), forecasts[0][1]


def load_for_scoring(path: Path, signature: dict) -> EnsembleForecaster:
    return EnsembleForecaster(path, signature)


# ---------------------------------------------------------------- serving (infer)

class EnsemblePredictor:
    """Each member reads its last rows and its columns of the ensemble's window."""

    def __init__(self, parts: list[tuple[Predictor, int, np.ndarray]], window: int):
        self.parts, self.window = parts, window

    def predict(self, x: np.ndarray, last_wall: np.ndarray, step: np.ndarray) -> np.ndarray:
        return np.mean([predictor.predict(np.ascontiguousarray(x[:, self.window - rows:][:, :, columns]), last_wall,
                                          step)
                        for predictor, rows, columns in self.parts], axis=0).astype(np.float32)


def load_for_serving(raw: bytes, spec: InputSpec, settings: ServingSettings) -> EnsemblePredictor:
    from flts.infer.features import InputSpec

    parts = []
    for member in members_of(raw, "the artifact"):
        sig = member.signature
        columns = tuple(sig.get("feature_columns") or ())
        missing = [c for c in columns if c not in spec.feature_columns]
        if missing or sig["input_seq_len"] > spec.input_seq_len or sig["output_seq_len"] != spec.output_seq_len:
            raise ArtifactError(f"member {member.model_type} reads {sig['input_seq_len']} rows of {list(columns)} for "
                                f"{sig['output_seq_len']} steps; the pointer gives {spec.input_seq_len} rows of "
                                f"{list(spec.feature_columns)} for {spec.output_seq_len}")
        member_spec = InputSpec(sig["input_seq_len"], sig["output_seq_len"], columns, spec.target,
                                spec.timestamp_column, spec.frequency_seconds)
        predictor = _format(member).load_for_serving(member.model, member_spec, settings)
        parts.append((predictor, sig["input_seq_len"], np.array([spec.feature_columns.index(c) for c in columns],
                                                                 dtype=np.intp)))
    return EnsemblePredictor(parts, spec.input_seq_len)
