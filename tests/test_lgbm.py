"""The LGBM family: lags chosen from the grid step, features computed inside the ONNX graph
from the raw window, parity of the graph with lightgbm, the horizon limit, the test windows'
lookback from the training tail, and a served model that needs no lightgbm."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import lightgbm as lgb
import numpy as np
import onnx
import pandas as pd
import pytest

from flts.forecasters import lgbm
from flts.forecasters import onnx as onnx_format
from flts.infer.features import InputSpec
from flts.preprocess.handler import add_time_features
from flts.settings import ConfigError
from flts.train import data
from flts.train.errors import TrainingError
from flts.train.settings import TrainSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOUR = 3600.0
DAY = 86_400.0


def settings(**env: str) -> TrainSettings:
    return TrainSettings.from_env({"MODEL_TYPE": "LGBM", "TARGET_COLUMN": "load", **env})


def hourly(days: int = 24, test_days: int = 4, gap_hours: int = 0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hourly load with a daily and a weekly cycle around 5e6, noise, a temperature column and
    the time features; the test split follows the training split (or starts `gap_hours` later)."""
    rows, test_rows = days * 24, test_days * 24
    times = pd.date_range("2024-01-01", periods=rows + test_rows + gap_hours, freq="h")
    hours = np.arange(len(times))
    noise = np.random.default_rng(seed).normal(0, 5e4, len(times))
    load = 5e6 + 1e6 * np.sin(2 * np.pi * hours / 24) + 4e5 * np.sin(2 * np.pi * hours / 168) + noise
    frame = add_time_features(pd.DataFrame({"time": times, "load": load, "temp": 20 + 5 * np.cos(2 * np.pi * hours / 24)}),
                              "time")
    return frame.iloc[:rows].reset_index(drop=True), frame.iloc[rows + gap_hours:].reset_index(drop=True)


def split_of(train: pd.DataFrame, test: pd.DataFrame) -> data.TrainData:
    columns = data.feature_columns_of(train, "time", "load", "train")
    return data.TrainData(columns, "load", "time", data.to_split(train, columns, "time", "load", "train"),
                          data.to_split(test, columns, "time", "load", "test"))


@pytest.fixture(scope="module")
def fitted():
    """One fit on three weeks of hourly data, HORIZON=2 (shared: a fit takes a few seconds)."""
    train, test = hourly()
    split = split_of(train, test)
    return split, train, test, lgbm.fit(settings(HORIZON="2"), split, None, "unit")


# ---------------------------------------------------------------- the lags

def test_two_minute_data_gets_the_daily_season():
    times = pd.date_range("2018-03-28", periods=6 * 720, freq="2min")  # six days, like ElBorn
    frame = pd.DataFrame({"time": times, "load": np.arange(len(times), dtype=float), "temp": 1.0})
    assert lgbm.plan_lags(settings(), split_of(frame, frame)).periods == (720,)  # the step from the timestamps
    six_days = lgbm.lag_plan(120.0, 6 * DAY, 0, (1, 2), settings())
    assert six_days.periods == (720,)
    assert six_days.seasonal == ((719, 720, 721),) and six_days.recent == tuple(range(1, 25))
    assert six_days.input_len == 721  # the largest lag
    # Three weeks: the weekly lag (5041 rows) is longer than LGBM_MAX_WINDOW, so only when that allows it.
    assert lgbm.lag_plan(120.0, 21 * DAY, 0, (), settings()).periods == (720,)
    assert lgbm.lag_plan(120.0, 21 * DAY, 0, (), settings(LGBM_MAX_WINDOW="6000")).periods == (720, 5040)


def test_hourly_data_gets_the_weekly_season_with_two_weeks_of_history():
    three_weeks = lgbm.lag_plan(HOUR, 21 * DAY, 0, (1,), settings())
    assert three_weeks.periods == (24, 168)
    assert three_weeks.seasonal == ((25, 167, 168, 169),)  # 23 and 24 are among the recent lags 1..24
    assert three_weeks.input_len == 169
    assert lgbm.lag_plan(HOUR, 10 * DAY, 0, (1,), settings()).periods == (24,)
    assert lgbm.lag_plan(HOUR, 21 * DAY, 0, (1,), settings(LGBM_SEASONS="none")).input_len == 24
    assert lgbm.lag_plan(DAY, 400 * DAY, 0, (), settings()).periods == (7,)  # daily data: a day is one row, no season


def test_each_step_reads_the_seasonal_lags_before_its_own_target():
    plan = lgbm.lag_plan(HOUR, 21 * DAY, 0, (), settings(HORIZON="30", LGBM_SHORT_LAGS="3"))
    assert plan.seasonal[0] == (23, 24, 25, 167, 168, 169)
    # Step 30's target row lies 29 rows after the origin: the day before it is not yet observed,
    # two days before it are (lags 48 ± 1 of the target, 18-20 of the origin); a week before it is.
    assert plan.seasonal[29] == (18, 19, 20, 138, 139, 140)
    assert all(lag >= 1 for lags in plan.seasonal for lag in lags) and plan.input_len == 169


def test_a_too_long_horizon_is_refused_naming_the_variable(fitted):
    split = fitted[0]
    with pytest.raises(ConfigError, match=r"HORIZON must be at most 48 for LGBM .*got 49: a horizon longer than "
                                          r"the model supports"):
        lgbm.fit(settings(HORIZON="49"), split, None, "unit")


def test_a_bad_season_list_names_the_variable():
    with pytest.raises(ConfigError, match=r"LGBM_SEASONS must be comma-separated periods in hours, each > 0"):
        settings(LGBM_SEASONS="24,weekly")


# ---------------------------------------------------------------- the graph

def test_the_graph_reads_the_planned_rows_of_the_raw_window():
    """Target = the row number, so every feature says which row it came from."""
    plan = lgbm.lag_plan(HOUR, 21 * DAY, 0, (1,), settings(LGBM_SHORT_LAGS="3", LGBM_LEVEL_ROWS="4"))
    length = plan.input_len
    window = np.zeros((1, length, 2), np.float32)
    window[0, :, 0] = np.arange(length)
    window[0, :, 1] = 7.0
    session = onnx_format.open_session(lgbm.features_model(plan, 2), "features")
    level, features = session.run(None, {"input": window})
    expected_level = np.mean(np.arange(length - 4, length))
    assert level[0, 0] == pytest.approx(expected_level)
    lags = [length - k for k in (1, 2, 3, *plan.seasonal[0])]
    blocks = [np.mean(np.arange(length - rows, length)) for rows in plan.periods]
    np.testing.assert_allclose(features[0], [*(np.array(lags + blocks) - expected_level), expected_level, 7.0])


def test_the_graph_input_is_the_raw_window(fitted):
    split, train, test, fit = fitted
    model = onnx.load_from_string(fit.model_bytes)
    [window] = model.graph.input
    dims = [d.dim_param or d.dim_value for d in window.type.tensor_type.shape.dim]
    assert (window.name, dims) == ("input", ["batch", fit.input_seq_len, len(split.feature_columns)])
    assert [o.name for o in model.graph.output] == ["forecast"]
    assert fit.input_seq_len == 169  # hourly data over three weeks: the weekly lag and its neighbour
    # What infer checks before serving it.
    spec = InputSpec(fit.input_seq_len, 2, tuple(split.feature_columns), "load")
    onnx_format.check_graph(onnx_format.open_session(fit.model_bytes, "lgbm"), spec)
    # Raw values in, original units out (around 5e6, no scaler outside the graph).
    assert np.sqrt(np.mean((fit.forecast - fit.truth) ** 2)) < 2e5


def test_the_served_graph_agrees_with_lightgbm(fitted):
    split, train, test, fit = fitted
    assert fit.metrics["onnx_max_abs_diff"] <= 1e-3 * split.train.target.std()
    assert fit.forecast.shape == fit.truth.shape == (len(test) - 1, 2)
    # Early stopping, not the cap, decided the rounds.
    assert 1 <= fit.metrics["best_iteration"] < settings().lgbm_n_estimators


def test_parity_beyond_the_tolerance_fails_the_run():
    reference = np.array([[1.0, 2.0]])
    assert lgbm.check_parity(reference, reference.astype(np.float32) + 0.01, 0.1) == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(TrainingError, match=r"the LGBM graph disagrees with lightgbm: max \|diff\| 0.5 > bound 0.1"):
        lgbm.check_parity(reference, reference.astype(np.float32) + 0.5, 0.1)


def test_thresholds_are_rounded_down_to_float32_without_changing_a_float32_forecast():
    """Two values one float32 apart: lightgbm splits between them, at a threshold that the
    nearest float32 would put on the upper value."""
    low = np.float32(1.0)
    high = np.nextafter(low, np.float32(2.0))
    x = np.repeat(np.array([[low], [high]], np.float32), 50, axis=0)
    y = np.repeat([0.0, 10.0], 50)
    booster = lgb.train({"objective": "regression", "min_data_in_leaf": 1, "verbosity": -1}, lgb.Dataset(x, y), 3)
    rounded = lgbm.float32_thresholds(booster.model_to_string())
    np.testing.assert_array_equal(rounded.predict(x), booster.predict(x))
    thresholds = [t for tree in rounded.dump_model()["tree_info"] for t in _thresholds(tree["tree_structure"])]
    assert thresholds and all(np.float64(np.float32(t)) == t for t in thresholds)


def _thresholds(node: dict) -> list[float]:
    if "threshold" not in node:
        return []
    return [node["threshold"], *_thresholds(node["left_child"]), *_thresholds(node["right_child"])]


# ---------------------------------------------------------------- the test windows

def test_the_test_windows_take_their_lookback_from_the_training_tail(fitted):
    split, train, test, fit = fitted
    assert fit.metrics["test_lookback_rows"] == fit.input_seq_len
    # Every test row is a target: the first window's first target is the first test row.
    np.testing.assert_allclose(fit.truth[:, 0], test["load"].to_numpy(np.float32)[:-1])


def test_a_test_split_that_does_not_follow_is_scored_alone():
    train, test = hourly(test_days=10, gap_hours=5)
    fit = lgbm.fit(settings(), split_of(train, test), None, "unit")
    assert fit.metrics["test_lookback_rows"] == 0
    np.testing.assert_allclose(fit.truth[:, 0], test["load"].to_numpy(np.float32)[fit.input_seq_len:])


# ---------------------------------------------------------------- the trainer

def test_the_trainer_signs_the_model_with_its_window_and_refuses_a_long_horizon(tmp_path):
    """Through the train handler: the signature says the window the graph reads (L, not
    INPUT_SEQ_LEN), and HORIZON=49 is a FAILED run whose error names the variable."""
    import io

    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from flts import events
    from flts.storage import FileStore
    from flts.train.handler import handle

    env = {"FLTS_OBJECT_DIR": str(tmp_path / "objects"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"), "MLFLOW_EXPERIMENT_NAME": "lgbm", "MODEL_TYPE": "LGBM"}
    store = FileStore(env["FLTS_OBJECT_DIR"])
    store.ensure_bucket("processed-data")
    for name, frame in zip(("train", "test"), hourly(), strict=True):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
        store.put_bytes("processed-data", f"unit/{name}.parquet", buffer.getvalue())
    claim = events.make_event(events.TRAINING_DATA, "test", {
        "bucket": "processed-data", "object_key": "unit/train.parquet", "test_object_key": "unit/test.parquet",
        "config_hash": "0123456789abcdef", "identifier": "unit", "target": "load", "timestamp_column": "time"})

    done = list(handle(claim, env))[-1].data
    assert done["status"] == "SUCCESS", done.get("error")
    path = MlflowClient(env["MLFLOW_TRACKING_URI"]).download_artifacts(done["run_id"], "LGBM/signature.json",
                                                                        str(tmp_path))
    signature = orjson.loads(open(path, "rb").read())
    assert (signature["format"], signature["input_seq_len"], signature["output_seq_len"]) == ("onnx", 169, 1)

    failed = list(handle(claim, {**env, "HORIZON": "49", "SKIP_DUPLICATE_CONFIGS": "0"}))[-1].data
    assert failed["status"] == "FAILED"
    assert failed["error"].startswith("HORIZON must be at most 48 for LGBM (one booster per step), got 49")


# ---------------------------------------------------------------- serving

SERVE = """
import json, sys
import numpy as np
from starlette.testclient import TestClient
from functions.infer.main import app
body = json.loads(sys.argv[1])
with TestClient(app) as client:
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.text
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"lightgbm", "onnxmltools", "sklearn", "onnx", "torch"})
print(json.dumps({"reply": reply.json(), "loaded": loaded}))
"""


def test_infer_serves_it_without_lightgbm(fitted, file_store):
    from flts.dev.testing import promote

    split, train, test, fit = fitted
    promote(file_store, fit.model_bytes, model_type="LGBM", input_seq_len=fit.input_seq_len, output_seq_len=2,
            feature_columns=split.feature_columns, target="load", frequency_seconds=HOUR)
    rows = pd.concat([train, test], ignore_index=True).iloc[len(train) - fit.input_seq_len:len(train)]
    body = {"index_col": "time", "data": {"time": rows["time"].dt.strftime("%Y-%m-%dT%H:%M:%S").tolist(),
                                          "load": rows["load"].tolist(), "temp": rows["temp"].tolist()}}
    out = subprocess.run([sys.executable, "-c", SERVE, json.dumps(body)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "FLTS_OBJECT_DIR": str(file_store.root)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    # The window of the first test row: the same forecast as the trainer's graph gave it.
    served = [row["load"] for row in result["reply"]["predictions"]]
    assert served == pytest.approx(fit.forecast[0].tolist(), rel=1e-5)
