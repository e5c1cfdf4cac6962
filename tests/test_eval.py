"""Eval: waiting for every model type, scoring on the test split, promotion layout, idempotence.

Runs are real MLflow runs (SQLite store in tmp_path) with the trainer's artifact layout:
tiny ONNX graphs (forecast = a·last target value, raw units in and out) and a real
Prophet fit. The data is a real preprocess output of a synthetic random walk, where
persistence (a = 1) is the best forecast and a damped copy (a < 1) is clearly worse.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pandas as pd
import pytest

from flts import events, forecasters, routing
from flts.embedded import EmbeddedRouter
from flts.eval import scoring
from flts.eval.handler import Candidate, Scored, handle, pick_winner, registered_model_name
from flts.events import EventError
from flts.forecasters.onnx import OnnxForecaster
from flts.preprocess import handler as preprocess
from flts.promotion import resolve_pointer
from flts.storage import FileStore

IDENT = "walk"
IN_LEN, OUT_LEN = 4, 2
BUCKET = "model-promotion"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite DB: creating one costs seconds, copying it does not."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def env(tmp_path, mlflow_template) -> dict:
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return {
        "FLTS_OBJECT_DIR": str(tmp_path / "objects"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"),
        "PROMOTION_SEARCH_RETRIES": "2",
        "PROMOTION_SEARCH_DELAY_SEC": "0.01",
        "EXPECTED_MODEL_TYPES": "GRU,LSTM,PROPHET",  # these tests' candidates, whatever else is registered
    }


def random_walk_csv(rows: int = 700, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    down = 1000 + np.cumsum(rng.normal(0, 10, rows))
    frame = pd.DataFrame({
        "time": pd.date_range("2024-01-01", periods=rows, freq="2min"),
        "down": down,
        "up": down * 0.1 + rng.normal(0, 1, rows),
    })
    return frame.to_csv(index=False).encode()


def preprocess_dataset(env: dict, identifier: str = IDENT) -> events.DataClaim:
    """Run the real preprocess on the synthetic CSV; returns its training-data claim."""
    store = FileStore(env["FLTS_OBJECT_DIR"])
    store.ensure_bucket("raw-data")
    store.put_bytes("raw-data", f"{identifier}/data.csv", random_walk_csv())
    ready = events.make_event(events.DATASET_READY, "test",
                              {"bucket": "raw-data", "object_key": f"{identifier}/data.csv", "identifier": identifier})
    [out] = preprocess.handle(ready, env)
    return events.parse_data(out)


def scaled_last_value_onnx(path: Path, n_features: int, target_index: int, factor: float,
                           in_len: int = IN_LEN, out_len: int = OUT_LEN) -> None:
    """forecast[b, :] = factor · input[b, -1, target_index] (raw units in and out, like the trainer's graphs)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gather", ["input", "last"], ["row"], axis=1),
        helper.make_node("Gather", ["row", "target"], ["value"], axis=1),
        helper.make_node("Unsqueeze", ["value", "axis1"], ["column"]),
        helper.make_node("Mul", ["column", "factor"], ["scaled"]),
        helper.make_node("Expand", ["scaled", "shape"], ["forecast"]),
    ]
    inits = [
        helper.make_tensor("last", TensorProto.INT64, [], [in_len - 1]),
        helper.make_tensor("target", TensorProto.INT64, [], [target_index]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("factor", TensorProto.FLOAT, [], [factor]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [1, out_len]),
    ]
    graph = helper.make_graph(
        nodes, "scaled_last", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_len, n_features])],
        [helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", out_len])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)


def prophet_json(path: Path, train: pd.DataFrame) -> None:
    from prophet import Prophet
    from prophet.serialize import model_to_json

    model = Prophet(daily_seasonality=False, weekly_seasonality=False, yearly_seasonality=False,
                    uncertainty_samples=0)
    model.fit(pd.DataFrame({"ds": train["time"], "y": train["down"]}))
    path.write_text(model_to_json(model))


def log_run(env: dict, claim: events.DataClaim, model_type: str, factor: float = 1.0,
            experiment: str | None = None, validation: dict | None = None):
    """A FINISHED run with the trainer's MLflow layout; returns its SUCCESS event."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    name = experiment or f"flts-{claim.identifier}"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=str(Path(env["MLFLOW_ARTIFACT_ROOT"]) / name))
    tags = {"config_hash": claim.config_hash, "model_type": model_type, "identifier": claim.identifier}
    run = client.create_run(exp_id, tags=tags)
    run_id = run.info.run_id
    for key, value in tags.items():
        client.log_param(run_id, key, value)

    store = FileStore(env["FLTS_OBJECT_DIR"])
    train = scoring.read_parquet(store, claim.bucket, claim.object_key)
    features = [c for c in train.columns if c != "time"]
    folder = Path(env["MLFLOW_ARTIFACT_ROOT"]).parent / "staging" / run_id / model_type
    folder.mkdir(parents=True)
    if model_type == "PROPHET":
        prophet_json(folder / "model.json", train)
        fmt = "prophet-json"
    else:
        scaled_last_value_onnx(folder / "model.onnx", len(features), features.index("down"), factor)
        fmt = "onnx"
    signature = {"format": fmt, "input_name": "input", "output_name": "forecast", "feature_columns": features,
                 "target": "down", "timestamp_column": "time", "input_seq_len": IN_LEN, "output_seq_len": OUT_LEN,
                 "frequency_seconds": 120.0, "config_hash": claim.config_hash, "model_type": model_type,
                 **({"intervals": validation["intervals"]} if validation and validation["intervals"] else {})}
    (folder / "signature.json").write_bytes(orjson.dumps(signature))
    if validation and "forecast" in validation:  # what the trainer logs for eval's ensembles
        np.savez(folder / "validation.npz", forecast=validation["forecast"], truth=validation["truth"])
    client.log_artifacts(run_id, str(folder), model_type)
    metrics = {"rmse": 1.0, "mae": 1.0, "mse": 1.0, "score": 1.0, "train_seconds": 0.1,
               **({"val_score": validation["score"], "val_windows": validation["windows"]} if validation else {})}
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return training_event(claim, model_type, run_id, name, metrics)


def training_event(claim, model_type, run_id, experiment, metrics=None, status="SUCCESS"):
    return events.make_event(events.MODEL_TRAINING, f"train-{model_type.lower()}", {
        "status": status, "model_type": model_type, "run_id": run_id, "experiment": experiment,
        "config_hash": claim.config_hash, "identifier": claim.identifier, "metrics": metrics or {},
        "bucket": claim.bucket, "object_key": claim.object_key, "test_object_key": claim.test_object_key})


def promotion_keys(env) -> list[str]:
    return list(FileStore(env["FLTS_OBJECT_DIR"]).list_keys(BUCKET))


def history(env, identifier=IDENT) -> list[str]:
    return [k for k in promotion_keys(env) if k.startswith(f"{identifier}/") and "/promotion-" in k]


def log_lines(stderr: str, name: str) -> list[dict]:
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


# ---------------------------------------------------------------- behaviour

def test_waits_for_every_expected_type_then_promotes_once(env, capsys):
    claim = preprocess_dataset(env)
    gru = log_run(env, claim, "GRU", 1.0)
    lstm = log_run(env, claim, "LSTM", 0.7)
    assert handle(gru, env) == []
    assert handle(lstm, env) == []
    assert promotion_keys(env) == []
    waiting = log_lines(capsys.readouterr().err, "promotion_waiting_for_models")
    assert waiting[-1]["missing"] == ["PROPHET"]

    prophet = log_run(env, claim, "PROPHET")
    # All three finished: events of the earlier runs (delivered late) defer to the last run's.
    assert handle(gru, env) == [] and handle(lstm, env) == []
    assert promotion_keys(env) == []
    deferred = log_lines(capsys.readouterr().err, "promotion_deferred")
    assert {d["promoting_run_id"] for d in deferred} == {prophet.data["run_id"]}

    [selected] = handle(prophet, env)
    assert selected["type"] == events.MODEL_SELECTED
    assert len(history(env)) == 1
    line = log_lines(capsys.readouterr().err, "promotion_scoreboard")[-1]
    board = line["scoreboard"]
    assert sorted(row["model_type"] for row in board) == ["GRU", "LSTM", "PROPHET"]
    # The test split follows the training split: inputs from its tail, every test row a target.
    assert (line["lookback_rows"], line["first_scored_test_row"]) == (IN_LEN, 0)
    assert {row["windows"] for row in board} == {claim.test_rows - OUT_LEN + 1}


@pytest.mark.parametrize("factors, expected", [({"GRU": 1.0, "LSTM": 0.7}, "GRU"),
                                               ({"GRU": 0.7, "LSTM": 1.0}, "LSTM")])
def test_lowest_score_on_the_test_split_wins(env, capsys, factors, expected):
    claim = preprocess_dataset(env)
    runs = {t: log_run(env, claim, t, f) for t, f in factors.items()}
    [selected] = handle(log_run(env, claim, "PROPHET"), env)
    assert selected.data["model_type"] == expected
    assert selected.data["run_id"] == runs[expected].data["run_id"]

    board = log_lines(capsys.readouterr().err, "promotion_scoreboard")[-1]["scoreboard"]
    scores = {row["model_type"]: row["score"] for row in board}
    assert selected.data["score"] == pytest.approx(min(scores.values()))
    # Every model forecast the same windows: the trainers' reported 1.0 never entered the ranking.
    assert len({row["windows"] for row in board}) == 1
    assert scores[expected] < 1.0


def test_the_validation_score_chooses_and_the_winners_intervals_are_promoted(env, capsys):
    """Honest selection: the test split is only reported (GRU forecasts the test windows better here)."""
    claim = preprocess_dataset(env)
    intervals = {"levels": [0.8, 0.95], "half_widths": [[1.0, 2.0], [3.0, 4.0]]}
    log_run(env, claim, "GRU", 1.0, validation={"score": 0.9, "windows": 50, "intervals": intervals})
    log_run(env, claim, "LSTM", 0.7, validation={"score": 0.2, "windows": 50, "intervals": intervals})
    [selected] = handle(log_run(env, claim, "PROPHET", validation={"score": 0.5, "windows": 50,
                                                                    "intervals": intervals}), env)
    assert selected.data["model_type"] == "LSTM" and selected.data["intervals"] == {
        **intervals, "scale_rows": 0, "short_scale_rows": 0, "season_rows": 0, "season_days": 0, "season_width": 0}
    board = log_lines(capsys.readouterr().err, "promotion_scoreboard")[-1]["scoreboard"]
    assert [row["model_type"] for row in board] == ["LSTM", "PROPHET", "GRU"]
    assert {row["selected_by"] for row in board} == {"val_score"}
    test_scores = {row["model_type"]: row["score"] for row in board}
    assert test_scores["GRU"] < test_scores["LSTM"]  # the test split would have chosen GRU


def validation_with_error(error: float, score: float) -> dict:
    truth = np.linspace(900, 1100, 50 * OUT_LEN).reshape(50, OUT_LEN)
    return {"score": score, "windows": 50, "intervals": None, "forecast": truth + error, "truth": truth}


def test_an_ensemble_that_beats_every_candidate_on_validation_is_promoted(env, capsys):
    """GRU and LSTM err in opposite directions on validation: their mean is exact there, so it
    becomes a candidate (an MLflow run of its own) and wins; infer serves the mean of the two graphs."""
    from mlflow.tracking import MlflowClient

    from flts.forecasters import ensemble as ensemble_format
    from flts.infer.model import input_spec
    from flts.infer.settings import ServingSettings

    claim = preprocess_dataset(env)
    gru = log_run(env, claim, "GRU", 1.0, validation=validation_with_error(+5.0, 0.5))
    lstm = log_run(env, claim, "LSTM", 0.7, validation=validation_with_error(-5.0, 0.6))
    last = log_run(env, claim, "PROPHET", validation={"score": 0.9, "windows": 50, "intervals": None})
    [selected] = handle(last, env)
    assert selected.data["model_type"] == "ENSEMBLE" and selected.data["artifact_format"] == "ensemble-json"
    [line] = log_lines(capsys.readouterr().err, "promotion_ensemble")
    assert line["members"] == ["GRU", "LSTM"]
    # Its intervals come from its own validation residuals (zero here), for each level.
    assert selected.data["intervals"]["half_widths"] == [[0.0] * OUT_LEN, [0.0] * OUT_LEN]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(selected.data["run_id"])
    assert run.data.tags["members"] == f"{gru.data['run_id']},{lstm.data['run_id']}"
    assert run.data.metrics["val_score"] < 0.5 and run.data.metrics["val_windows"] == 50

    pointer = events.PromotionPointer.model_validate(selected.data)
    raw = FileStore(env["FLTS_OBJECT_DIR"]).get_bytes(pointer.artifact_bucket, pointer.artifact_key)
    fmt = forecasters.artifact_format(pointer.artifact_format)
    predictor = fmt.load_for_serving(raw, input_spec(pointer, {}, fmt), ServingSettings.from_env({}))
    x = np.random.default_rng(0).uniform(900, 1100, (4, IN_LEN, len(pointer.feature_columns))).astype(np.float32)
    target = pointer.feature_columns.index("down")
    np.testing.assert_allclose(predictor.predict(x, np.zeros(4), np.full(4, 120.0)),
                               np.repeat(0.85 * x[:, -1, target:target + 1], OUT_LEN, axis=1), rtol=1e-6)
    assert ensemble_format.members_of(raw, "x")[0].run_id == gru.data["run_id"]

    # A redelivered event finds the same ensemble run again.
    [again] = handle(last, env)
    assert again.data["run_id"] == selected.data["run_id"] and len(history(env)) == 1


def test_no_ensemble_when_the_mean_is_not_better(env, capsys):
    claim = preprocess_dataset(env)
    log_run(env, claim, "GRU", 1.0, validation=validation_with_error(+5.0, 0.5))
    log_run(env, claim, "LSTM", 0.7, validation=validation_with_error(+50.0, 0.6))
    [selected] = handle(log_run(env, claim, "PROPHET", validation={"score": 0.9, "windows": 50,
                                                                    "intervals": None}), env)
    assert selected.data["model_type"] == "GRU"
    assert log_lines(capsys.readouterr().err, "promotion_ensemble_not_better")


def test_the_promoted_run_gets_its_forecast_plot(env):
    """plots/forecast_vs_actual.png on the winner's run only: forecast vs actual with its intervals."""
    from mlflow.tracking import MlflowClient

    claim = preprocess_dataset(env)
    intervals = {"levels": [0.8, 0.95], "half_widths": [[1.0, 2.0], [3.0, 4.0]]}
    runs = {t: log_run(env, claim, t, f, validation={"score": s, "windows": 50, "intervals": intervals})
            for t, f, s in (("GRU", 1.0, 0.9), ("LSTM", 0.7, 0.2))}
    handle(log_run(env, claim, "PROPHET", validation={"score": 0.5, "windows": 50, "intervals": intervals}), env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    plots = {t: [a.path for a in client.list_artifacts(r.data["run_id"], "plots")] for t, r in runs.items()}
    assert plots == {"LSTM": ["plots/forecast_vs_actual.png"], "GRU": []}
    png = client.download_artifacts(runs["LSTM"].data["run_id"], "plots/forecast_vs_actual.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_validation_on_unequal_windows_falls_back_to_the_test_score(env):
    claim = preprocess_dataset(env)
    log_run(env, claim, "GRU", 1.0, validation={"score": 0.9, "windows": 50, "intervals": None})
    log_run(env, claim, "LSTM", 0.7, validation={"score": 0.2, "windows": 40, "intervals": None})
    [selected] = handle(log_run(env, claim, "PROPHET", validation={"score": 0.5, "windows": 50,
                                                                    "intervals": None}), env)
    assert selected.data["model_type"] == "GRU"


def test_redelivery_rewrites_the_same_pointer_without_new_history(env):
    claim = preprocess_dataset(env)
    log_run(env, claim, "GRU", 1.0)
    log_run(env, claim, "LSTM", 0.7)
    last = log_run(env, claim, "PROPHET")
    [first] = handle(last, env)
    store = FileStore(env["FLTS_OBJECT_DIR"])
    current = store.get_bytes(BUCKET, f"{IDENT}/current.json")

    [again] = handle(last, env)
    assert again.data == first.data
    assert len(history(env)) == 1
    assert store.get_bytes(BUCKET, f"{IDENT}/current.json") == current


def test_pointer_layout_artifact_copy_and_resolution(env):
    from mlflow import MlflowClient

    claim = preprocess_dataset(env)
    gru = log_run(env, claim, "GRU", 1.0)
    log_run(env, claim, "LSTM", 0.7)
    [selected] = handle(log_run(env, claim, "PROPHET"), env)
    pointer = selected.data
    run_id, h = gru.data["run_id"], claim.config_hash

    prefix = f"{IDENT}/{h}/artifacts/{run_id}"
    [hist] = history(env)
    assert hist.startswith(f"{IDENT}/{h}/promotion-") and hist.endswith(".json")
    assert set(promotion_keys(env)) == {hist, f"{IDENT}/current.json", "current.json",
                                        f"{prefix}/model.onnx", f"{prefix}/signature.json"}
    assert pointer["artifact_bucket"] == BUCKET and pointer["artifact_key"] == f"{prefix}/model.onnx"
    assert pointer["artifact_format"] == "onnx"
    assert pointer["model_uri"] == f"runs:/{run_id}/GRU"
    assert pointer["weights"] == {"rmse": 0.5, "mae": 0.3, "mse": 0.2}
    assert (pointer["input_seq_len"], pointer["output_seq_len"], pointer["target"]) == (IN_LEN, OUT_LEN, "down")
    assert pointer["frequency_seconds"] == 120.0 and pointer["timestamp_column"] == "time"
    assert "minute_sin" in pointer["feature_columns"]

    store = FileStore(env["FLTS_OBJECT_DIR"])
    for ident in (IDENT, None, "someone-else"):
        assert resolve_pointer(store, BUCKET, ident).model_dump(mode="json", exclude_none=True) == pointer
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    original = Path(client.download_artifacts(run_id, "GRU/model.onnx", str(Path(env["MLFLOW_ARTIFACT_ROOT"]).parent)))
    assert store.get_bytes(BUCKET, pointer["artifact_key"]) == original.read_bytes()

    # The copied graph serves without MLflow: raw window in, persistence out (factor 1).
    session = ort.InferenceSession(store.get_bytes(BUCKET, pointer["artifact_key"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, IN_LEN, len(pointer["feature_columns"]))).astype(np.float32)
    out = session.run(["forecast"], {"input": x})[0]
    target = pointer["feature_columns"].index("down")
    assert np.allclose(out, np.repeat(x[:, -1, target][:, None], OUT_LEN, axis=1))

    champion = client.get_model_version_by_alias(registered_model_name(IDENT), "champion")
    assert champion.run_id == run_id


def test_run_with_a_missing_artifact_is_left_out(env, capsys):
    claim = preprocess_dataset(env)
    gru = log_run(env, claim, "GRU", 1.0)
    lstm = log_run(env, claim, "LSTM", 0.9)
    gru_id = gru.data["run_id"]
    [onnx_file] = Path(env["MLFLOW_ARTIFACT_ROOT"]).rglob(f"{gru_id}/artifacts/GRU/model.onnx")
    onnx_file.unlink()  # the best model's artifact is gone: it must not win (nor crash eval)

    [selected] = handle(log_run(env, claim, "PROPHET"), env)
    assert selected.data["run_id"] == lstm.data["run_id"]
    excluded = log_lines(capsys.readouterr().err, "promotion_run_excluded")
    assert [line["run_id"] for line in excluded] == [gru_id]
    assert "model.onnx" in excluded[0]["error"]


def test_no_loadable_run_means_no_promotion(env, capsys):
    claim = preprocess_dataset(env)
    log_run(env, claim, "GRU")
    log_run(env, claim, "LSTM")
    last = log_run(env, claim, "PROPHET")
    for path in Path(env["MLFLOW_ARTIFACT_ROOT"]).rglob("signature.json"):
        path.write_text("{not json")
    assert handle(last, env) == []
    assert promotion_keys(env) == []
    assert log_lines(capsys.readouterr().err, "promotion_no_valid_runs")


def test_runs_of_other_configs_do_not_count(env):
    claim = preprocess_dataset(env)
    other = claim.model_copy(update={"config_hash": "f" * 64})
    log_run(env, other, "GRU")
    log_run(env, other, "LSTM")
    assert handle(log_run(env, claim, "PROPHET"), env) == []


def test_search_retries_only_while_the_events_own_run_is_not_visible(env, capsys):
    claim = preprocess_dataset(env)
    gru = log_run(env, claim, "GRU")
    env = {**env, "PROMOTION_SEARCH_RETRIES": "3"}
    assert handle(gru, env) == []  # its own run is visible: no waiting for the other types
    assert log_lines(capsys.readouterr().err, "promotion_search_retry_wait") == []

    ghost = training_event(claim, "LSTM", "0" * 32, gru.data["experiment"])
    assert handle(ghost, env) == []  # a run that MLflow does not show (yet): bounded retries
    waits = log_lines(capsys.readouterr().err, "promotion_search_retry_wait")
    assert [w["attempt"] for w in waits] == [1, 2]


def test_expected_types_setting_decides_when_to_promote(env):
    claim = preprocess_dataset(env)
    [selected] = handle(log_run(env, claim, "GRU"), {**env, "EXPECTED_MODEL_TYPES": "gru"})
    assert selected.data["model_type"] == "GRU"


# ---------------------------------------------------------------- bad or ignored events

def test_running_events_and_failures_mlflow_never_recorded_are_ignored(env):
    claim = preprocess_dataset(env)
    for status in ("RUNNING", "FAILED"):
        assert handle(training_event(claim, "GRU", None, "x", status=status), env) == []


def failed_run(env: dict, claim: events.DataClaim, model_type: str):
    """A run MLflow recorded FAILED, as the trainer leaves one; returns its FAILED event."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    name = f"flts-{claim.identifier}"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run_id = client.create_run(exp_id, tags={"config_hash": claim.config_hash, "model_type": model_type}).info.run_id
    client.set_terminated(run_id, "FAILED")
    return training_event(claim, model_type, run_id, name, status="FAILED")


def test_a_family_that_failed_settles_its_type_and_the_rest_compete(env, capsys):
    claim = preprocess_dataset(env)
    gru, lstm = log_run(env, claim, "GRU", 1.0), log_run(env, claim, "LSTM", 0.7)
    assert handle(gru, env) == [] and handle(lstm, env) == []  # PROPHET has not settled yet
    prophet = failed_run(env, claim, "PROPHET")
    [selected] = handle(prophet, env)  # the failure is the last to settle: its event promotes
    assert selected.data["model_type"] == "GRU"
    present = log_lines(capsys.readouterr().err, "promotion_all_models_present")[-1]
    assert present["failed"] == ["PROPHET"] and sorted(present["runs"]) == ["GRU", "LSTM"]


def test_when_every_family_failed_nothing_is_promoted(env, capsys):
    claim = preprocess_dataset(env)
    failures = [failed_run(env, claim, t) for t in ("GRU", "LSTM", "PROPHET")]
    assert handle(failures[-1], env) == [] and promotion_keys(env) == []
    [impossible] = log_lines(capsys.readouterr().err, "promotion_impossible")
    assert impossible["failed"] == ["GRU", "LSTM", "PROPHET"]


@pytest.mark.parametrize("change, problem", [
    ({"status": "DONE"}, "status"),
    ({"config_hash": None}, "config_hash"),
    ({"run_id": None}, "run_id"),
    ({"identifier": "../etc"}, "identifier"),
    ({"config_hash": "abc' or '1'='1"}, "config_hash"),
])
def test_bad_events_are_rejected_naming_the_problem(change, problem):
    data = {"status": "SUCCESS", "model_type": "GRU", "run_id": "r1", "experiment": "e",
            "config_hash": "a" * 64, "identifier": "x"}
    data.update(change)
    from cloudevents.http import CloudEvent

    event = CloudEvent({"type": events.MODEL_TRAINING, "source": "/test"}, {k: v for k, v in data.items() if v is not None})
    with pytest.raises(EventError, match=problem):
        handle(event, {})


def test_wrong_event_type_is_rejected():
    event = events.make_event(events.DATASET_READY, "test", {"bucket": "b", "object_key": "k", "identifier": "x"})
    with pytest.raises(EventError, match="not handled here"):
        handle(event, {})


def test_http_entry_answers_400_for_a_bad_event_and_202_when_nothing_to_promote(env, monkeypatch):
    from cloudevents.conversion import to_binary
    from functions_framework import create_app

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = create_app("eval_function", str(Path(__file__).resolve().parent.parent / "functions/eval/main.py"))
    client = app.test_client()
    claim = preprocess_dataset(env)

    headers, body = to_binary(training_event(claim, "GRU", None, "x", status="RUNNING"))
    assert client.post("/", headers=headers, data=body).status_code == 202
    headers, body = to_binary(events.make_event(events.DATASET_READY, "t", {"bucket": "b", "object_key": "k", "identifier": "x"}))
    response = client.post("/", headers=headers, data=body)
    assert response.status_code == 400 and "not handled here" in response.get_json()["error"]


# ---------------------------------------------------------------- pure parts

def _scored(run_id: str, score: float, start: int) -> Scored:
    return Scored(Candidate(run_id, "GRU", start, "e", {}), None, {"score": score})


def test_ties_go_to_the_newest_run():
    assert pick_winner([_scored("old", 0.5, 1), _scored("new", 0.5, 2), _scored("worse", 0.6, 3)]).candidate.run_id == "new"
    assert pick_winner([_scored("best", 0.1, 1), _scored("new", 0.5, 2)]).candidate.run_id == "best"


def test_baselines_forecast_the_model_windows():
    target = np.arange(10, 30, dtype=float)  # 20 test rows
    history = np.arange(0, 10, dtype=float)
    pers = scoring.persistence_forecast(target, origin=4, output_len=2)
    assert pers.shape == (20 - 4 - 2 + 1, 2)
    assert pers[0].tolist() == [13, 13] and pers[-1].tolist() == [27, 27]
    seas = scoring.seasonal_naive_forecast(history, target, origin=4, output_len=2, season=5)
    # origin 4 of the test = row 14 of history+test; one season (5) earlier = row 9 → value 9, then 10.
    assert seas[0].tolist() == [9, 10] and seas.shape == pers.shape
    assert scoring.season_steps(120) == 720 and scoring.season_steps(3600) == 24
    with pytest.raises(ValueError, match="too few"):
        scoring.seasonal_naive_forecast(history[:2], target, origin=1, output_len=1, season=5)


def test_models_with_different_input_lengths_score_the_same_targets(tmp_path):
    frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=30, freq="h"),
                          "down": np.arange(30.0), "up": np.ones(30)})
    graphs = persistence_graphs(tmp_path, input_lens=(2, 5))
    origin = scoring.first_origin([g.signature for g in graphs])
    assert origin == 5
    (p_short, y_short), (p_long, y_long) = (g.forecast(frame, origin) for g in graphs)
    assert np.array_equal(y_short, y_long) and y_short[0].tolist() == [5, 6, 7]
    assert len(y_short) == 30 - 5 - 3 + 1
    # A persistence graph and the persistence baseline agree window for window.
    baseline = scoring.persistence_forecast(frame["down"].to_numpy(), origin, 3)
    assert np.array_equal(p_short, baseline) and np.array_equal(p_long, baseline)


def two_splits(test_gap: str = "0min") -> scoring.Split:
    """40 training rows and 20 test rows on a 2-minute grid; the test split follows the
    training split directly, or after `test_gap` more (a test file that stands alone)."""
    times = pd.date_range("2024-01-01", periods=60, freq="2min")
    frame = pd.DataFrame({"time": times, "down": np.arange(60.0), "up": np.ones(60)})
    test = frame.iloc[40:].assign(time=lambda f: f["time"] + pd.Timedelta(test_gap))
    return scoring.Split(frame.iloc[:40].reset_index(drop=True), test.reset_index(drop=True))


def persistence_graphs(tmp_path, input_lens=(4, 6), out_len=3) -> list[OnnxForecaster]:
    graphs = []
    for in_len in input_lens:
        path = tmp_path / f"in{in_len}.onnx"
        scaled_last_value_onnx(path, 2, 0, 1.0, in_len=in_len, out_len=out_len)
        graphs.append(OnnxForecaster(path, {"format": "onnx", "feature_columns": ["down", "up"], "target": "down",
                                            "timestamp_column": "time", "input_seq_len": in_len,
                                            "output_seq_len": out_len}))
    return graphs


def test_a_following_test_split_is_scored_from_its_first_row(tmp_path):
    split, graphs = two_splits(), persistence_graphs(tmp_path)
    frame = scoring.scoring_frame(split, [g.signature for g in graphs])
    assert (frame.lookback, frame.origin, frame.first_scored_test_row) == (6, 6, 0)
    # The rows before the first target are training rows only: no test row is input-only.
    assert frame.frame["time"].iloc[:6].tolist() == split.train["time"].iloc[-6:].tolist()
    assert frame.frame["time"].iloc[6:].tolist() == split.test["time"].tolist()
    for graph in graphs:
        pred, y = graph.forecast(frame.frame, frame.origin)
        assert y[:, 0].tolist() == split.test["down"].iloc[:20 - 3 + 1].tolist()
        assert set(y.ravel()) == set(split.test["down"])  # every test row is a target
        assert np.array_equal(pred, frame.persistence("down", 3))
    assert frame.persistence("down", 3)[0].tolist() == [39.0] * 3  # the last training value
    # One season (10 rows) before the first test row (row 40) is training row 30.
    assert frame.seasonal_naive("down", 3, season=10)[0].tolist() == [30.0, 31.0, 32.0]


@pytest.mark.parametrize("split, signature_change", [
    (two_splits(test_gap="1h"), {}),  # a gap: the test file stands alone
    (two_splits(), {"timestamp_column": None}),  # no timestamps to tell whether it follows
])
def test_a_standalone_test_file_keeps_the_old_windows(tmp_path, split, signature_change):
    graphs = persistence_graphs(tmp_path)
    for graph in graphs:
        graph.signature.update(signature_change)
    frame = scoring.scoring_frame(split, [g.signature for g in graphs])
    assert (frame.lookback, frame.origin, frame.first_scored_test_row) == (0, 6, 6)
    assert frame.frame.equals(split.test)
    for graph in graphs:
        pred, y = graph.forecast(frame.frame, frame.origin)
        old_pred, old_y = graph.forecast(split.test, 6)  # what eval scored before the lookback
        assert np.array_equal(pred, old_pred) and np.array_equal(y, old_y)
        assert y[0, 0] == split.test["down"].iloc[6]
    assert frame.seasonal_naive("down", 3, season=10)[0].tolist() == [36.0, 37.0, 38.0]


def test_a_frame_never_scores_training_rows():
    with pytest.raises(ValueError, match="would score training rows"):
        scoring.frame_of(two_splits(), lookback=7, origin=6)
    with pytest.raises(scoring.ArtifactError, match="test split has 20 rows"):
        scoring.frame_of(two_splits(), lookback=6, origin=6).check_enough_rows(21)


# ---------------------------------------------------------------- end to end with the real trainer

def test_real_trainers_then_eval_promote_one_servable_model(env):
    """preprocess → the real trainers (tiny settings) → eval, embedded: the trainer↔eval contract for real."""
    pytest.importorskip("torch")

    # Tiny training: this checks the contract, not accuracy (benchmarks/accuracy.py does that).
    pipeline_env = {**env, "EPOCHS": "2", "HIDDEN_SIZE": "4", "BATCH_SIZE": "128", "INPUT_SEQ_LEN": "6",
                    "HORIZON": "2", "TORCH_THREADS": "1"}
    store = FileStore(pipeline_env["FLTS_OBJECT_DIR"])
    store.ensure_bucket("raw-data")
    store.put_bytes("raw-data", "walk/data.csv", random_walk_csv(rows=600))
    deployments = [d for d in routing.DEPLOYMENTS if d.function != "infer"]  # serving is tested elsewhere
    router = EmbeddedRouter(pipeline_env, deployments)
    router.publish(events.make_event(events.DATASET_READY, "test",
                                     {"bucket": "raw-data", "object_key": "walk/data.csv", "identifier": "walk"}))
    router.run()
    assert router.dead_letters() == []

    trained = [e.data for e in router.published if e["type"] == events.MODEL_TRAINING and e.data["status"] == "SUCCESS"]
    assert sorted(t["model_type"] for t in trained) == sorted(forecasters.names())
    [selected] = [e.data for e in router.published if e["type"] == events.MODEL_SELECTED]
    assert selected["run_id"] in {t["run_id"] for t in trained}
    assert selected["config_hash"] == trained[0]["config_hash"]
    assert (selected["input_seq_len"], selected["output_seq_len"]) == (6, 2)
    # Calibrated on the winner's validation windows: one half-width per level and step, wider at 95 %.
    assert selected["intervals"]["levels"] == [0.8, 0.95]
    narrow, wide = selected["intervals"]["half_widths"]
    assert len(narrow) == len(wide) == 2 and all(0 < a <= b for a, b in zip(narrow, wide, strict=True))

    pointer = resolve_pointer(store, "model-promotion", "walk")
    assert pointer.run_id == selected["run_id"]
    raw = store.get_bytes(pointer.artifact_bucket, pointer.artifact_key)
    if pointer.artifact_format == "onnx":
        # Raw features in, original-unit forecast out, straight from the promotion bucket.
        test = scoring.read_parquet(store, "processed-data", trained[0]["test_object_key"])
        x = test[pointer.feature_columns].to_numpy(np.float32)[None, :6]
        session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
        forecast = session.run(["forecast"], {"input": x})[0]
        assert forecast.shape == (1, 2) and np.all(np.isfinite(forecast))
        assert abs(forecast[0, 0] - test[pointer.target].iloc[6]) < 10 * test[pointer.target].std()
    else:
        assert raw.startswith(b"{")
