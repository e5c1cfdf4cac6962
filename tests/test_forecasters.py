"""The registry of model families: lookups, a light import, and every family round-tripping
fit → artifact folder → load for scoring (eval) → load for serving (infer)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import orjson
import pandas as pd
import pytest

from flts import forecasters, routing
from flts.events import DataClaim
from flts.forecasters import ArtifactError, UnknownModelType
from flts.infer.features import InputSpec, wall_seconds
from flts.infer.settings import ServingSettings
from flts.metrics import TargetScale, regression_metrics
from flts.settings import ConfigError
from flts.train import data
from flts.train.handler import Job, fit_and_write
from flts.train.settings import TrainSettings

IN_LEN, OUT_LEN, STEP = 6, 2, 1800.0
HEAVY = {"torch", "onnxruntime", "pandas", "prophet", "mlflow", "statsforecast", "numba"}


def test_names_are_the_registered_families_in_order():
    assert forecasters.names() == ("GRU", "LSTM", "PROPHET", "LGBM", "MSTL")
    assert [f.name for f in forecasters.FAMILIES] == list(forecasters.names())


def test_every_family_has_a_trainer_deployment():
    trainers = [d.env["MODEL_TYPE"] for d in routing.DEPLOYMENTS if d.function == "train"]
    assert trainers == list(forecasters.names())


def test_importing_the_registry_stays_light():
    code = "import json, sys, flts.forecasters; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not HEAVY & loaded


def test_lookups_by_type_and_format():
    gru, lstm, prophet, lgbm = (forecasters.family(n) for n in ("GRU", " lstm ", "Prophet", "lgbm"))
    assert gru.format is lstm.format is lgbm.format is forecasters.artifact_format("onnx")  # one ONNX loader
    assert (gru.model_file, prophet.model_file) == ("model.onnx", "model.json")
    assert prophet.format.name == "prophet-json" and not prophet.format.takes_features


def test_unknown_model_type_names_the_variable_and_the_families():
    expected = r"MODEL_TYPE must be one of \['GRU', 'LSTM', 'PROPHET', 'LGBM', 'MSTL'\], got 'xgboost'"
    with pytest.raises(UnknownModelType, match=expected):
        forecasters.family("xgboost")
    with pytest.raises(ConfigError, match=expected):
        TrainSettings.from_env({"MODEL_TYPE": "xgboost"})
    with pytest.raises(ConfigError, match=r"MODEL_TYPE must be one of .*got ''"):
        TrainSettings.from_env({})


def test_unknown_artifact_format_names_the_known_ones():
    with pytest.raises(ArtifactError, match=r"unknown artifact format 'pickle' \(known: \['ensemble-json', 'mstl-json', 'onnx', 'prophet-json'\]\)"):
        forecasters.artifact_format("pickle")


@pytest.mark.parametrize("name", forecasters.names())
def test_hyperparameters_are_the_window_and_the_family_settings(name):
    params = TrainSettings.from_env({"MODEL_TYPE": name}).hyperparameters()
    window = ["target", "timestamp_column", "input_seq_len", "output_seq_len"]
    assert list(params) == [*window, *forecasters.family(name).hyperparameters]


# ---------------------------------------------------------------- round trip

def frames(rows: int = 480, test_rows: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A daily cycle on a 30-minute grid, with a second column that follows it."""
    times = pd.date_range("2024-01-01", periods=rows + test_rows, freq="30min")
    phase = 2 * np.pi * np.arange(rows + test_rows) / 48
    frame = pd.DataFrame({"time": times, "load": 100 + 10 * np.sin(phase), "temp": 20 + 5 * np.cos(phase)})
    return frame.iloc[:rows].reset_index(drop=True), frame.iloc[rows:].reset_index(drop=True)


def train_data(train: pd.DataFrame, test: pd.DataFrame) -> data.TrainData:
    columns = data.feature_columns_of(train, "time", "load", "train")
    return data.TrainData(columns, "load", "time", data.to_split(train, columns, "time", "load", "train"),
                          data.to_split(test, columns, "time", "load", "test"))


@pytest.mark.parametrize("name", forecasters.names())
def test_every_family_round_trips(name, tmp_path):
    """What fit writes is what eval scores (the logged metrics again) and what infer serves (the same forecasts)."""
    family = forecasters.family(name)
    train, test = frames()
    settings = TrainSettings.from_env({"MODEL_TYPE": name, "TARGET_COLUMN": "load", "INPUT_SEQ_LEN": str(IN_LEN),
                                       "HORIZON": str(OUT_LEN), "EPOCHS": "2", "HIDDEN_SIZE": "4"})
    claim = DataClaim(bucket="b", object_key="k", config_hash="0123456789abcdef", identifier="unit")
    metrics, _ = fit_and_write(Job(claim, settings, "load", "time", "e"), train_data(train, test), tmp_path)

    model_path = tmp_path / name / family.model_file
    signature = orjson.loads((tmp_path / name / forecasters.SIGNATURE).read_bytes())
    assert signature["format"] == family.format.name and signature["model_type"] == name
    assert bool(signature["feature_columns"]) == family.format.takes_features
    in_len = signature["input_seq_len"]  # INPUT_SEQ_LEN, or the window the family chose (LGBM: its largest lag)

    # The rows the family scored itself on: the test split alone, or after a lookback from the training tail.
    lookback = int(metrics.get("test_lookback_rows", 0))
    rows = pd.concat([train.iloc[len(train) - lookback:], test], ignore_index=True)
    scored, y = family.format.load_for_scoring(model_path, signature).forecast(rows, in_len)
    rescored = regression_metrics(y, scored, TargetScale.fit(train["load"].to_numpy()))
    assert rescored["nrmse"] == pytest.approx(metrics["nrmse"], rel=1e-5)

    spec = InputSpec(in_len, OUT_LEN, tuple(signature["feature_columns"]), "load", "time", STEP)
    predictor = family.format.load_for_serving(model_path.read_bytes(), spec, ServingSettings.from_env({}))
    batch = 3
    x = np.stack([rows[list(spec.feature_columns)].to_numpy(np.float32)[i:i + in_len] for i in range(batch)])
    last_wall = wall_seconds(rows["time"].to_numpy()[in_len - 1:in_len - 1 + batch])
    served = predictor.predict(x, last_wall, np.full(batch, STEP))
    np.testing.assert_allclose(served, scored[:batch], rtol=1e-5)


def test_a_model_that_does_not_load_is_named(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a graph")
    with pytest.raises(ArtifactError, match="model.onnx does not load in ONNX Runtime"):
        forecasters.artifact_format("onnx").load_for_scoring(path, {})
    spec = InputSpec(IN_LEN, OUT_LEN, (), "load")
    with pytest.raises(ArtifactError, match="the artifact is not a Prophet model JSON"):
        forecasters.artifact_format("prophet-json").load_for_serving(b"{", spec, ServingSettings.from_env({}))


def test_the_pointer_contract_knows_every_artifact_format():
    from typing import get_args

    from flts.events import PromotionPointer

    assert set(get_args(PromotionPointer.model_fields["artifact_format"].annotation)) == {
        f.name for f in forecasters.FORMATS}


@pytest.mark.parametrize("name", forecasters.names())
def test_validation_never_touches_test_rows(name, tmp_path):
    """The validation windows (eval's choice, the intervals) are the training split's tail, and
    what a family forecasts there does not move when every test value changes."""
    family = forecasters.family(name)
    train, test = frames()
    settings = TrainSettings.from_env({"MODEL_TYPE": name, "TARGET_COLUMN": "load", "INPUT_SEQ_LEN": str(IN_LEN),
                                       "HORIZON": str(OUT_LEN), "EPOCHS": "2", "HIDDEN_SIZE": "4"})
    changed = test.assign(load=test["load"] * 3 + 50, temp=-test["temp"])
    first = family.fit(settings, train_data(train, test), tmp_path / "a", "a")
    second = family.fit(settings, train_data(train, changed), tmp_path / "b", "b")
    (forecast, truth), (again, _) = first.validation, second.validation
    tail = train["load"].to_numpy()[-(len(truth) + OUT_LEN - 1):]
    np.testing.assert_allclose(truth, np.lib.stride_tricks.sliding_window_view(tail, OUT_LEN), rtol=1e-6)
    np.testing.assert_array_equal(forecast, again)
    if family.format.takes_features:  # the test forecasts did read the change (Prophet reads only the calendar)
        assert not np.allclose(first.forecast, second.forecast)
