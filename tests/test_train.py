"""The train function on the embedded default: FileStore objects, MLflow on SQLite.

Small slices of the real LTE data (and one synthetic series) with a couple of epochs keep
this file fast; the accuracy figures on the full data come from benchmarks, not tests.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cloudevents.http import CloudEvent

from flts import events
from flts.events import EventError
from flts.metrics import TargetScale, regression_metrics
from flts.preprocess import handler as preprocess
from flts.settings import ConfigError
from flts.storage import FileStore
from flts.train.handler import handle
from flts.windows import make_windows

BUCKET = "processed-data"
HASH = "0123456789abcdef"


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory) -> Path:
    # One SQLite store for the module: creating its schema costs ~2 s.
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def env(tmp_path, mlflow_dir, request) -> dict[str, str]:
    return {
        "FLTS_OBJECT_DIR": str(tmp_path / "objects"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(mlflow_dir / "artifacts"),
        # Each test its own experiment, so runs of one test never dedup against another's.
        "MLFLOW_EXPERIMENT_NAME": f"test-{request.node.name}",
        "MODEL_TYPE": "GRU",
        "EPOCHS": "2",
        "HIDDEN_SIZE": "8",
    }


def lte_frames(lte_dir: Path, train_rows: int = 400, test_rows: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tail of PobleSec and the head of its test file (contiguous in time), preprocessed for real."""
    settings = preprocess.PreprocessSettings()
    train = preprocess.read_csv((lte_dir / "PobleSec.csv").read_bytes(), settings, "PobleSec.csv").tail(train_rows)
    test = preprocess.read_csv((lte_dir / "PobleSec_test.csv").read_bytes(), settings, "PobleSec_test.csv").head(test_rows)
    return preprocess.transform(train.reset_index(drop=True), test.reset_index(drop=True), settings)


def sine_frames(rows: int = 700, test_rows: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A smooth daily cycle far from zero (mean 5e6): predictable, and wrong by miles if scaling leaks."""
    times = pd.date_range("2024-01-01", periods=rows + test_rows, freq="30min")
    phase = 2 * np.pi * np.arange(rows + test_rows) / 48
    frame = pd.DataFrame({"time": times, "load": 5e6 + 1e6 * np.sin(phase), "temp": 20 + 5 * np.cos(phase)})
    return frame.iloc[:rows].reset_index(drop=True), frame.iloc[rows:].reset_index(drop=True)


def put_parquet(store: FileStore, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    store.ensure_bucket(BUCKET)
    store.put_bytes(BUCKET, key, buffer.getvalue())


def claim_event(env: dict, train: pd.DataFrame, test: pd.DataFrame, target: str = "down",
                config_hash: str = HASH, identifier: str = "unit"):
    store = FileStore(env["FLTS_OBJECT_DIR"])
    prefix = f"{identifier}/{config_hash}"
    put_parquet(store, f"{prefix}/train.parquet", train)
    put_parquet(store, f"{prefix}/test.parquet", test)
    return events.make_event(events.TRAINING_DATA, "test", {
        "bucket": BUCKET, "object_key": f"{prefix}/train.parquet", "test_object_key": f"{prefix}/test.parquet",
        "config_hash": config_hash, "identifier": identifier, "target": target, "timestamp_column": "time",
    })


def mlflow_client(env: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])


def download(env: dict, run_id: str, path: str, dst: Path) -> Path:
    return Path(mlflow_client(env).download_artifacts(run_id, path, str(dst)))


def succeeded(out) -> dict:
    out = list(out)
    assert [e["type"] for e in out] == [events.MODEL_TRAINING] * 2
    assert out[0].data["status"] == "RUNNING"
    assert out[1].data["status"] == "SUCCESS", out[1].data.get("error")
    return out[1].data


def failed(out) -> str:
    out = list(out)
    assert [e.data["status"] for e in out] == ["RUNNING", "FAILED"]
    return out[1].data["error"]


# ---------------------------------------------------------------- GRU / LSTM

@pytest.mark.parametrize("model_type", ["GRU", "LSTM"])
def test_rnn_run_logs_the_contract_and_scores_the_served_graph(env, lte_dir, tmp_path, model_type):
    train, test = lte_frames(lte_dir)
    event = claim_event(env, train, test)
    data = succeeded(handle(event, {**env, "MODEL_TYPE": model_type}))

    assert data["model_type"] == model_type and data["config_hash"] == HASH and data["identifier"] == "unit"
    assert data["experiment"] == env["MLFLOW_EXPERIMENT_NAME"]
    assert (data["bucket"], data["object_key"], data["test_object_key"]) == (
        BUCKET, event.data["object_key"], event.data["test_object_key"])
    for name in ("rmse", "mae", "mse", "rmse_orig", "mae_orig", "nrmse", "mase", "score", "train_seconds"):
        assert np.isfinite(data["metrics"][name]), name

    client = mlflow_client(env)
    run = client.get_run(data["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("model_type", "config_hash", "identifier"):
        assert run.data.tags[key] == data[key] and run.data.params[key] == data[key]
    assert run.data.params["epochs"] == "2" and run.data.params["hidden_size"] == "8"
    files = {a.path for folder in (model_type, "scaler", "plots") for a in client.list_artifacts(data["run_id"], folder)}
    assert files == {f"{model_type}/model.onnx", f"{model_type}/signature.json", f"{model_type}/validation.npz",
                     "scaler/scaler.pkl", "scaler/scaler.json", "plots/loss_curve.png"}

    signature = orjson.loads(download(env, data["run_id"], f"{model_type}/signature.json", tmp_path).read_bytes())
    columns = [c for c in train.columns if c != "time"]
    intervals = signature.pop("intervals")  # conformal, from the validation windows
    assert signature == {
        "format": "onnx", "input_name": "input", "output_name": "forecast", "feature_columns": columns,
        "target": "down", "timestamp_column": "time", "input_seq_len": 10, "output_seq_len": 1,
        "frequency_seconds": 120.0, "config_hash": HASH, "model_type": model_type,
    }
    assert intervals["levels"] == [0.8, 0.95] and 0 < intervals["half_widths"][0][0] <= intervals["half_widths"][1][0]
    assert intervals["scale_rows"] == 168  # multiples of the window's recent change (INTERVAL_SCALE_ROWS)

    # Raw test windows in, original units out: rescoring the downloaded graph gives the logged metrics.
    session = ort.InferenceSession(str(download(env, data["run_id"], f"{model_type}/model.onnx", tmp_path)))
    x, y = make_windows(test[columns].to_numpy(np.float32), test["down"].to_numpy(), 10, 1)
    forecast = session.run(["forecast"], {"input": x})[0]
    assert forecast.shape == (len(x), 1) and forecast.dtype == np.float32
    rescored = regression_metrics(y, forecast, TargetScale.fit(train["down"].to_numpy()))
    for name in ("rmse", "mae", "mse", "nrmse", "score"):
        assert rescored[name] == pytest.approx(data["metrics"][name], rel=1e-6)
    # The dynamic batch axis: one window alone gives the same forecast as inside the batch.
    single = session.run(["forecast"], {"input": x[5:6]})[0]
    assert single[0, 0] == pytest.approx(float(forecast[5, 0]), rel=1e-5)


def test_early_stopping_restores_and_logs_the_best_epoch(env, lte_dir):
    train, test = lte_frames(lte_dir)
    data = succeeded(handle(claim_event(env, train, test), {**env, "EPOCHS": "6", "PATIENCE": "2"}))
    history = [m.value for m in mlflow_client(env).get_metric_history(data["run_id"], "epoch_val_loss")]
    assert 1 <= len(history) <= 6
    best = int(np.argmin(history))
    assert data["metrics"]["val_loss"] == pytest.approx(history[best])
    assert data["metrics"]["best_epoch"] == best + 1
    assert data["metrics"]["epochs_run"] == len(history)


def test_scaling_lives_in_the_graph(env, tmp_path):
    """A series around 5e6 is forecast in its own units by the graph alone (no scaler outside)."""
    train, test = sine_frames()
    event = claim_event(env, train, test, target="load")
    data = succeeded(handle(event, {**env, "EPOCHS": "40", "HIDDEN_SIZE": "16", "LEARNING_RATE": "0.01",
                                    "BATCH_SIZE": "64"}))
    scaler = orjson.loads(download(env, data["run_id"], "scaler/scaler.json", tmp_path).read_bytes())
    assert scaler["feature_columns"] == ["load", "temp"] and scaler["target"] == "load"
    assert scaler["target_mean"] == pytest.approx(5e6, rel=0.01)
    session = ort.InferenceSession(str(download(env, data["run_id"], "GRU/model.onnx", tmp_path)))
    x, y = make_windows(test[["load", "temp"]].to_numpy(np.float32), test["load"].to_numpy(), 10, 1)
    forecast = session.run(["forecast"], {"input": x})[0]
    # Off by the scaler (a graph without it) the forecast would sit near 0, an error of ~5e6.
    assert np.sqrt(np.mean((forecast - y) ** 2)) < 1e5
    assert data["metrics"]["nrmse"] < 0.02


def test_multi_step_output(env, tmp_path):
    train, test = sine_frames()
    data = succeeded(handle(claim_event(env, train, test, target="load"), {**env, "HORIZON": "3",
                                                                            "INPUT_SEQ_LEN": "12"}))
    signature = orjson.loads(download(env, data["run_id"], "GRU/signature.json", tmp_path).read_bytes())
    assert (signature["input_seq_len"], signature["output_seq_len"]) == (12, 3)
    session = ort.InferenceSession(str(download(env, data["run_id"], "GRU/model.onnx", tmp_path)))
    x, _ = make_windows(test[["load", "temp"]].to_numpy(np.float32), test["load"].to_numpy(), 12, 3)
    assert session.run(["forecast"], {"input": x[:7]})[0].shape == (7, 3)
    assert session.get_inputs()[0].shape[1:] == [12, 2]
    # Validated on the training tail the weights never saw: eval chooses on it and promotes its intervals.
    assert {"val_score", "val_nrmse", "val_windows"} <= set(data["metrics"]) and data["metrics"]["val_windows"] > 0
    intervals = signature["intervals"]
    assert intervals["levels"] == [0.8, 0.95] and [len(row) for row in intervals["half_widths"]] == [3, 3]


def test_onnx_export_matches_torch_with_manual_scaling():
    """ONNX Runtime on raw values == torch core on hand-standardised values, unscaled by hand."""
    import torch

    from flts.forecasters import rnn

    torch.manual_seed(0)
    core = rnn.RecurrentForecaster("LSTM", 3, 8, 2, 0.1, 2).eval()
    mean, scale = np.array([1e8, 50.0, -3.0]), np.array([2e7, 10.0, 0.5])
    wrapper = rnn.ScaledForecaster(core, mean, scale, 1e8, 2e7).eval()
    rng = np.random.default_rng(0)
    x = (mean + scale * rng.standard_normal((33, 6, 3))).astype(np.float32)
    served = rnn.onnx_predict(rnn.export_onnx(wrapper, x, 17), x)
    with torch.no_grad():
        by_hand = core(torch.from_numpy(((x - mean) / scale).astype(np.float32))).numpy() * 2e7 + 1e8
    assert served.shape == (33, 2)
    assert np.max(np.abs(served - by_hand)) < 1e-5 * 2e7
    assert rnn.check_parity(rnn.predict(wrapper, x), served, 1e-4 * 2e7) < 1e-4 * 2e7
    with pytest.raises(rnn.TrainingError, match="disagrees"):
        rnn.check_parity(served + 100.0, served, 50.0)  # float32 ulp at 1e8 is 8


def test_parity_failure_fails_the_run(env, lte_dir):
    train, test = lte_frames(lte_dir)
    out = handle(claim_event(env, train, test), {**env, "PARITY_TOLERANCE": "1e-30"})
    assert "ONNX graph disagrees with torch" in failed(out)
    runs = mlflow_client(env).search_runs([mlflow_client(env).get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"]).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]  # so dedup will not reuse it


# ---------------------------------------------------------------- dedup through MLflow

def test_duplicate_config_reannounces_the_finished_run(env, lte_dir):
    train, test = lte_frames(lte_dir)
    event = claim_event(env, train, test)
    first = succeeded(handle(event, env))
    second = succeeded(handle(event, env))  # a redelivery, or a restarted trainer: no memory shared
    assert second["run_id"] == first["run_id"] and second["deduplicated"] is True
    assert second["metrics"] == first["metrics"]
    client = mlflow_client(env)
    exp = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    assert len(client.search_runs([exp.experiment_id])) == 1

    # Another model type of the same config is not a duplicate; SKIP_DUPLICATE_CONFIGS=0 retrains.
    lstm = succeeded(handle(event, {**env, "MODEL_TYPE": "LSTM"}))
    again = succeeded(handle(event, {**env, "SKIP_DUPLICATE_CONFIGS": "0"}))
    assert len({first["run_id"], lstm["run_id"], again["run_id"]}) == 3
    assert len(client.search_runs([exp.experiment_id])) == 3


# ---------------------------------------------------------------- PROPHET

def test_prophet_run(env, lte_dir, tmp_path):
    from prophet.serialize import model_from_json

    train, test = lte_frames(lte_dir, train_rows=1500, test_rows=200)
    data = succeeded(handle(claim_event(env, train, test), {**env, "MODEL_TYPE": "PROPHET"}))
    assert data["model_type"] == "PROPHET" and 0 < data["metrics"]["nrmse"] < 5
    signature = orjson.loads(download(env, data["run_id"], "PROPHET/signature.json", tmp_path).read_bytes())
    assert signature["format"] == "prophet-json" and signature["output_seq_len"] == 1
    assert signature["target"] == "down" and signature["frequency_seconds"] == 120.0
    model = model_from_json(download(env, data["run_id"], "PROPHET/model.json", tmp_path).read_text())
    # The stored model reproduces the logged score on the test windows' target times.
    yhat = model.predict(pd.DataFrame({"ds": test["time"]}))["yhat"].to_numpy()
    _, pred = make_windows(np.zeros((len(test), 1)), yhat, 10, 1)
    _, y = make_windows(np.zeros((len(test), 1)), test["down"].to_numpy(), 10, 1)
    rescored = regression_metrics(y, pred, TargetScale.fit(train["down"].to_numpy()))
    assert rescored["nrmse"] == pytest.approx(data["metrics"]["nrmse"], rel=1e-4)
    assert mlflow_client(env).list_artifacts(data["run_id"], "scaler")


# ---------------------------------------------------------------- bad input

def _nan_feature(train, test):
    train = train.copy()
    train.loc[7, "up"] = np.nan
    return train, test


def _inf_in_test(train, test):
    test = test.copy()
    test.loc[3, "rnti_count"] = np.inf
    return train, test


@pytest.mark.parametrize("mutate, expected", [
    (lambda tr, te: (tr.drop(columns=["down"]), te.drop(columns=["down"])), "no target column 'down'"),
    (lambda tr, te: (tr.head(11), te), "training split has 11 rows: too few"),
    (lambda tr, te: (tr, te.head(10)), "test split has 10 rows: too few"),
    (_nan_feature, "column 'up' has a non-finite value (nan) in row 8"),
    (_inf_in_test, "column 'rnti_count' has a non-finite value (inf) in row 4"),
    (lambda tr, te: (tr, te.drop(columns=["mcs_up"])), "lacks column(s) ['mcs_up']"),
])
def test_bad_data_fails_the_run_with_a_clear_error(env, lte_dir, mutate, expected):
    train, test = mutate(*lte_frames(lte_dir, train_rows=100, test_rows=30))
    assert expected in failed(handle(claim_event(env, train, test), env))


def test_missing_object_fails_the_run(env, lte_dir):
    train, test = lte_frames(lte_dir, train_rows=100, test_rows=30)
    event = claim_event(env, train, test)
    FileStore(env["FLTS_OBJECT_DIR"]).root.joinpath(BUCKET, event.data["test_object_key"]).unlink()
    assert f"object not found: {BUCKET}/{event.data['test_object_key']}" in failed(handle(event, env))


def test_bad_data_is_a_failed_run_eval_can_settle_on(env, lte_dir):
    """The run exists before the data is read: its FAILED event names it, so eval can promote the rest."""
    train, test = lte_frames(lte_dir, train_rows=100, test_rows=30)
    out = list(handle(claim_event(env, train, test.drop(columns=["up"])), env))
    assert out[-1].data["status"] == "FAILED" and out[-1].data["run_id"]
    run = mlflow_client(env).get_run(out[-1].data["run_id"])
    assert run.info.status == "FAILED" and "lacks column(s) ['up']" in run.data.tags["error"]


def test_a_store_out_of_reach_is_retried_not_failed(env, lte_dir, monkeypatch):
    """S3 down while the trainer reads: no FAILED event (it would settle the type for eval); the
    exception escapes (the HTTP entry answers 503, the dispatcher retries) and the run is KILLED,
    which settles nothing; the retry, once the store is back, trains and succeeds."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    from flts.outcomes import STORE_UNAVAILABLE, status_of_exception
    from flts.train import handler as train_handler

    class DownStore(FileStore):
        def get_bytes(self, bucket, key):
            raise MaxRetryError(None, f"/{bucket}/{key}", NewConnectionError(None, "Connection refused"))

    event = claim_event(env, *lte_frames(lte_dir))
    monkeypatch.setattr(train_handler, "store_from_env", lambda e: DownStore(e["FLTS_OBJECT_DIR"]))
    out = handle(event, env)
    assert next(out).data["status"] == "RUNNING"
    with pytest.raises(MaxRetryError) as raised:
        next(out)
    assert status_of_exception(raised.value) == STORE_UNAVAILABLE
    client = mlflow_client(env)
    [killed] = client.search_runs([client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"]).experiment_id])
    assert killed.info.status == "KILLED" and "out of reach" in killed.data.tags["error"]

    monkeypatch.undo()  # the store is back: the redelivery trains again
    assert succeeded(handle(event, env))["run_id"] != killed.info.run_id


def test_too_few_rows_for_validation(env, lte_dir):
    train, test = lte_frames(lte_dir, train_rows=14, test_rows=30)
    error = failed(handle(claim_event(env, train, test), {**env, "VAL_FRACTION": "0.5"}))
    assert "too few for one training window" in error and "validation" in error


def test_validation_holds_a_horizon_of_origins_for_long_horizons():
    """Windows = rows - horizon + 1: 10 % of the rows, at least 48 windows, and as many windows as
    the horizon has steps when that is more (each step then judged from a horizon of origins)."""
    from flts.train.data import validation_rows

    assert validation_rows(10_000, 10, 1, 0.1) == 1000
    assert validation_rows(4192, 10, 24, 0.1) == 419  # 10 % is enough: 396 windows
    assert validation_rows(4192, 10, 720, 0.1) - 720 + 1 == 720
    assert validation_rows(4192, 10, 30, 0.001) - 30 + 1 == 48


def test_invalid_events_are_rejected():
    with pytest.raises(EventError, match="not handled here"):
        list(handle(events.make_event(events.DATASET_READY, "test", {"bucket": "b", "object_key": "k", "identifier": "i"}),
                    {"MODEL_TYPE": "GRU"}))
    bare = CloudEvent({"type": events.TRAINING_DATA, "source": "/test"}, {"bucket": "processed-data", "identifier": "x"})
    with pytest.raises(EventError, match="missing field 'object_key'"):
        list(handle(bare, {"MODEL_TYPE": "GRU"}))


def test_unknown_model_type_is_a_configuration_error(env, lte_dir):
    train, test = lte_frames(lte_dir, train_rows=100, test_rows=30)
    with pytest.raises(ConfigError, match="MODEL_TYPE must be one of"):
        list(handle(claim_event(env, train, test), {**env, "MODEL_TYPE": "XGBOOST"}))


# ---------------------------------------------------------------- the HTTP entry

def test_http_entry_replies_with_both_events(env, lte_dir, repo, monkeypatch):
    """functions/train/main.py in functions-framework's own app (in process, no server)."""
    import functions_framework
    from cloudevents.conversion import to_binary

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("K_SINK", raising=False)
    app = functions_framework.create_app("train", str(repo / "functions" / "train" / "main.py"))
    client = app.test_client()

    train, test = lte_frames(lte_dir, train_rows=100, test_rows=30)
    headers, body = to_binary(claim_event(env, train, test))
    reply = client.post("/", headers=headers, data=body)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/cloudevents-batch+json"
    assert [e["data"]["status"] for e in orjson.loads(reply.data)] == ["RUNNING", "SUCCESS"]

    bad = CloudEvent({"type": events.TRAINING_DATA, "source": "/test"}, {"identifier": "x"})
    headers, body = to_binary(bad)
    reply = client.post("/", headers=headers, data=body)
    assert reply.status_code == 400 and b"missing field 'bucket'" in reply.data
