"""The whole pipeline on the local full stack, and infer scaling to zero behind its front door.

Every deployment runs as its own process (`flts.dev.stack.up`) behind the real dispatcher, on
the session's real Kafka, S3 server and MLflow server: a slice of the real ElBorn data is
uploaded, preprocessed, trained by the three trainers, scored and promoted by eval, and the
promotion reaches infer through the front door as a CloudEvent. Then `/predict` goes
through the same front door, infer is scaled to zero after the grace and cold-started again.

Isolation from other tests on the shared topics: a consumer-group prefix of our own that
starts at the end of each topic (DISPATCH_OFFSET_RESET=latest), so no earlier event is
delivered to our functions, and a unique dataset identifier to filter what we read back.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from datetime import datetime, timedelta

import httpx
import pandas as pd
import pytest

from flts import cli, events, forecasters, routing
from flts.dev import infra as fi
from flts.dev import processes, stack
from flts.dev.testing import stack_pids
from flts.dispatcher import event_from_kafka
from flts.intervals import IntervalScaling

pytestmark = pytest.mark.stack

TRAIN_ROWS, TEST_ROWS = 3000, 600
GRACE_SECONDS = 3.0
PIPELINE_TIMEOUT = 240.0
# Small training for speed; everything else is the stack's default.
FAST_ENV = {"EPOCHS": "3", "PATIENCE": "2", "PROMOTION_SEARCH_DELAY_SEC": "0.5",
            "SCALE_TO_ZERO_GRACE_SECONDS": str(GRACE_SECONDS), "DISPATCH_OFFSET_RESET": "latest"}


@pytest.fixture
def full_stack(infra, monkeypatch):
    """Every function process + the dispatcher on the session's infrastructure; all stopped at the end."""
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=infra, function_base_port=base + 1, dispatcher_port=base)
    for name, value in {**FAST_ENV, "DISPATCH_GROUP_PREFIX": f"fullstack-{uuid.uuid4().hex[:8]}-"}.items():
        monkeypatch.setenv(name, value)  # the processes inherit the shell's environment
    seen: set[int] = set()  # every pid of ours we saw, checked dead after `down`
    try:
        stack.up(cfg, with_infra=False)
        yield cfg, seen
    finally:
        seen |= stack_pids(cfg)
        stack.down(cfg, with_infra=False)
    left = [pid for pid in seen if processes.pid_alive(pid)]
    assert not left, f"processes outlived `down`: {left}"


@pytest.fixture
def elborn_slice(lte_dir, tmp_path):
    """The last TRAIN_ROWS rows of ElBorn.csv and the first TEST_ROWS of ElBorn_test.csv."""
    train = pd.read_csv(lte_dir / "ElBorn.csv").tail(TRAIN_ROWS)
    test = pd.read_csv(lte_dir / "ElBorn_test.csv").head(TEST_ROWS)
    paths = tmp_path / "ElBorn_slice.csv", tmp_path / "ElBorn_slice_test.csv"
    train.to_csv(paths[0], index=False)
    test.to_csv(paths[1], index=False)
    return paths[0], paths[1], test


# --------------------------------------------------------------------------- Kafka
class TopicReader:
    """Reads our identifier's events from topics, starting where the topics ended when made."""

    def __init__(self, bootstrap: str, topics: list[str]):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        parts = [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or {0})]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)  # resolve "end" now, before anything is uploaded
        self.seen: list[tuple[str, dict]] = []

    def until(self, done, identifier: str, timeout: float):
        """Poll until done(events) is true; every event of `identifier` is kept in self.seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = event_from_kafka(record.headers, record.value)
                    if event["subject"] == identifier:
                        self.seen.append((event["type"], event.data))
            if done(self.seen):
                return self.seen
        raise AssertionError(f"timed out after {timeout:.0f}s; events for {identifier}: "
                             f"{[(t, d.get('model_type'), d.get('status')) for t, d in self.seen]}")

    def close(self):
        self.consumer.close(autocommit=False)


def _selected(seen):
    return [data for kind, data in seen if kind == events.MODEL_SELECTED]


# --------------------------------------------------------------------------- checks
def _minio(infra):
    from minio import Minio

    creds = fi.s3_credentials(infra)
    return Minio(fi.s3_endpoint(infra), access_key=creds.access_key, secret_key=creds.secret_key, secure=False)


def _get_json(s3, bucket: str, key: str) -> dict:
    response = s3.get_object(bucket, key)
    try:
        return json.loads(response.read())
    finally:
        response.close()
        response.release_conn()


def _predict_body(history: pd.DataFrame, identifier: str, rows: int) -> dict:
    """The `rows` real rows (the model's history_rows) that end at test row 110: they reach back
    into the training tail when the model's window is longer than that (LGBM's daily lags)."""
    end = len(history) - TEST_ROWS + 110
    window = history.ffill().iloc[end - rows:end]  # empty cells carry the previous value, as `flts predict` does
    return {"data": {col: window[col].tolist() for col in window.columns}, "index_col": "time",
            "identifier": identifier}


def _frontdoor(cfg) -> dict:
    door = next(p for p in stack.plan(cfg) if p.scale_to_zero)
    status = stack.frontdoor_status(door)
    assert status is not None, "the front door does not answer its status route"
    return status


def _wait_scaled_to_zero(cfg, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _frontdoor(cfg)
        if status["backend"] == "stopped":
            return status
        time.sleep(0.2)
    raise AssertionError(f"infer still {status['backend']} {timeout:.0f}s after the grace: {status}")


def _infer_url(cfg) -> str:
    return next(p.url for p in stack.plan(cfg) if p.scale_to_zero)


# --------------------------------------------------------------------------- the test
def test_pipeline_through_the_full_stack_and_infer_scales_to_zero(full_stack, infra, elborn_slice, capsys):
    cfg, seen_pids = full_stack
    train_csv, test_csv, test = elborn_slice
    identifier = f"ElBorn-{uuid.uuid4().hex[:8]}"
    reader = TopicReader(fi.kafka_bootstrap(infra), [routing.topic_of(events.MODEL_TRAINING),
                                                     routing.topic_of(events.MODEL_SELECTED)])
    try:
        started = time.monotonic()
        stack.upload(cfg, train_csv, test_csv, identifier)
        seen = reader.until(lambda s: _selected(s), identifier, PIPELINE_TIMEOUT)
        print(f"\nupload → model-selected on Kafka: {time.monotonic() - started:.1f}s")
        seen_pids |= stack_pids(cfg)
        # eval answers (reply → model-selected) after every SUCCESS is on Kafka: all of them are read
        reader.until(lambda s: len({d["model_type"] for k, d in s if k == events.MODEL_TRAINING
                                    and d["status"] == "SUCCESS"}) == len(forecasters.names()), identifier, 10)
    finally:
        reader.close()
    trainings = [d for kind, d in seen if kind == events.MODEL_TRAINING]
    successes = {d["model_type"]: d for d in trainings if d["status"] == "SUCCESS"}
    assert set(successes) == set(forecasters.names()), trainings
    assert not [d for d in trainings if d["status"] == "FAILED"], trainings
    # eval may promote again on a later SUCCESS once all runs are in MLflow: the same pointer
    pointers = [events.PromotionPointer.model_validate(d) for d in _selected(seen)]
    pointer = pointers[0]
    assert {p.run_id for p in pointers} == {pointer.run_id}
    assert successes[pointer.model_type]["run_id"] == pointer.run_id
    assert {d["config_hash"] for d in successes.values()} == {pointer.config_hash}

    # the promotion pointers, in the S3 server
    s3, bucket = _minio(infra), "model-promotion"
    assert _get_json(s3, bucket, f"{identifier}/current.json")["run_id"] == pointer.run_id
    assert _get_json(s3, bucket, "current.json")["run_id"] == pointer.run_id  # the newest promotion of all
    history = [o.object_name for o in s3.list_objects(bucket, prefix=f"{identifier}/{pointer.config_hash}/promotion-")]
    assert len(history) == 1, history
    assert _get_json(s3, bucket, history[0]) == _get_json(s3, bucket, f"{identifier}/current.json")
    assert s3.stat_object(pointer.artifact_bucket, pointer.artifact_key).size > 0

    # the winner's run in the MLflow server, its artifacts in the S3 server's mlflow bucket
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=fi.mlflow_uri(infra)).get_run(pointer.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["config_hash"] == pointer.config_hash and run.data.params["identifier"] == identifier
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    prefix = "artifacts/" + run.info.artifact_uri.removeprefix("mlflow-artifacts:").strip("/") + "/"
    stored = [o.object_name.removeprefix(prefix) for o in s3.list_objects("mlflow", prefix=prefix, recursive=True)]
    assert any(key.startswith(f"{pointer.model_type}/") for key in stored), stored

    # infer got model-selected through the front door (a cold start), then scaled to zero
    door = _wait_scaled_to_zero(cfg, GRACE_SECONDS + 15)
    assert door["starts"] >= 1 and door["stops"] >= 1 and door["grace_seconds"] == GRACE_SECONDS
    row = next(r for r in stack.status(cfg) if r["name"] == "fn-infer")
    assert row["state"] == "healthy" and row["scaled_to_zero"] and "scaled to zero" in row["note"]

    # /predict through the front door: a cold start, answered by the promoted model
    history = pd.concat([pd.read_csv(train_csv), test], ignore_index=True)
    intervals = pointer.intervals.model_dump() if pointer.intervals else None
    rows = max(pointer.input_seq_len, IntervalScaling.of(intervals).history_rows(pointer.output_seq_len))
    body = _predict_body(history, identifier, rows)  # what /readyz states as history_rows
    with httpx.Client(base_url=_infer_url(cfg), timeout=60, trust_env=False) as client:
        t0 = time.monotonic()
        response = client.post("/predict", json=body)
        first = time.monotonic() - t0
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["run_id"] == pointer.run_id and answer["model_type"] == pointer.model_type
        (prediction,) = answer["predictions"]
        last = datetime.fromisoformat(body["data"]["time"][-1])
        assert datetime.fromisoformat(prediction["ts"]) == last + timedelta(minutes=2)
        assert math.isfinite(prediction["down"])
        running = _frontdoor(cfg)
        assert running["backend"] == "running" and running["starts"] == door["starts"] + 1
        seen_pids.add(running["pid"])
        warm = client.post("/predict", json=body)
        assert warm.status_code == 200 and warm.json()["predictions"] == answer["predictions"]

        # no traffic for the grace → scaled to zero: the infer process is gone
        stopped = _wait_scaled_to_zero(cfg, GRACE_SECONDS + 15)
        assert stopped["stops"] == running["stops"] + 1 and not processes.pid_alive(running["pid"])
        # ... and the next request starts it again
        again = client.post("/predict", json=body)
        assert again.status_code == 200 and again.json()["run_id"] == pointer.run_id
        restarted = _frontdoor(cfg)
        assert restarted["starts"] == running["starts"] + 1 and restarted["pid"] != running["pid"]
        seen_pids.add(restarted["pid"])

    # `flts predict` sends the CSV's last history_rows rows (asked from /readyz) and prints the answer
    history_csv = test_csv.with_name("history.csv")
    history.to_csv(history_csv, index=False)
    capsys.readouterr()
    assert cli.main(["predict", str(history_csv), "--url", _infer_url(cfg)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == pointer.run_id
    assert datetime.fromisoformat(printed["predictions"][0]["ts"]) == test["time"].map(datetime.fromisoformat).max() + timedelta(minutes=2)
    print(f"cold start /predict: {first:.2f}s; front door cold starts: {restarted['cold_starts']}")
