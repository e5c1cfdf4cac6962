"""Faults, and the stack healing itself.

- A trainer's MLflow run left RUNNING by a killed trainer is marked KILLED when the event comes
  again; one whose trainer still runs is waited for (a local MLflow, no services).
- On the real local stack (`stack` mark): the whole pipeline while a function process is
  killed with SIGKILL mid-pipeline, while the dispatcher is, while Kafka restarts, and while
  the S3 server, MLflow or PostgreSQL (MLflow's backend) is down for 20 s; each must end with no
  human action in exactly one promotion, one `model-selected`, nothing lost and no dead letter.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from flts.train import tracking


# --------------------------------------------------------------------------- runs a killed trainer left
@pytest.fixture
def mlflow_client(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _dead_owner() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = tracking._process_start(proc.pid)
    proc.wait()
    return tracking.owner().split(":")[0] + f":{proc.pid}:{started}"


def test_a_run_whose_trainer_died_is_marked_killed(mlflow_client, monkeypatch):
    exp = mlflow_client.create_experiment("chaos")
    tags = {"model_type": "GRU", "config_hash": "abc"}
    dead = mlflow_client.create_run(exp, tags={**tags, tracking.OWNER_TAG: _dead_owner()}).info.run_id
    elsewhere = mlflow_client.create_run(exp, tags={**tags, tracking.OWNER_TAG: "another-host:1:1"}).info.run_id
    other_config = mlflow_client.create_run(exp, tags={"model_type": "GRU", "config_hash": "xyz",
                                                       tracking.OWNER_TAG: _dead_owner()}).info.run_id
    live = mlflow_client.create_run(exp, tags={**tags, tracking.OWNER_TAG: tracking.owner()}).info.run_id
    monkeypatch.setattr(tracking, "LIVE_RUN_POLL_SEC", 0.1)
    # the live run (this process) ends a moment later: settle waits for it rather than train beside it
    finisher = threading.Timer(1.0, mlflow_client.set_terminated, (live, "FINISHED"))
    finisher.start()
    t0 = time.monotonic()
    assert tracking.settle_unfinished_runs(mlflow_client, exp, "GRU", "abc") == [dead]
    assert time.monotonic() - t0 >= 0.9
    finisher.join()
    status = {run: mlflow_client.get_run(run).info.status for run in (dead, elsewhere, other_config, live)}
    assert status == {dead: "KILLED", elsewhere: "RUNNING", other_config: "RUNNING", live: "FINISHED"}
    assert "killed" in mlflow_client.get_run(dead).data.tags["error"]


# --------------------------------------------------------------------------- the real stack
TRAIN_ROWS, TEST_ROWS = 3000, 600
FAST_ENV = {"EPOCHS": "3", "PATIENCE": "2", "PROMOTION_SEARCH_DELAY_SEC": "0.5", "DISPATCH_OFFSET_RESET": "latest"}


@pytest.fixture(scope="module")
def chaos_stack(infra):
    """Every function process + the dispatcher under the supervisor, on the session's infrastructure;
    shared by the faults (one upload each); all stopped at the end, no process left."""
    import uuid

    from flts import routing
    from flts.dev import processes, stack

    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=infra, function_base_port=base + 1, dispatcher_port=base)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**FAST_ENV, "DISPATCH_GROUP_PREFIX": f"chaos-{uuid.uuid4().hex[:8]}-"}.items():
            mp.setenv(name, value)  # supervisord and its processes inherit the shell's environment
        try:
            stack.up(cfg, with_infra=False)
            yield cfg
        finally:
            seen = {pid for p in stack.plan(cfg) for pid in processes.pids_in(stack.workdir(cfg, p.name))}
            stack.down(cfg, with_infra=False)
    assert not [pid for pid in seen if processes.pid_alive(pid)], "processes outlived `down`"


@pytest.fixture(scope="module")
def elborn_slice(lte_dir, tmp_path_factory):
    import pandas as pd

    folder = tmp_path_factory.mktemp("chaos")
    paths = folder / "ElBorn_slice.csv", folder / "ElBorn_slice_test.csv"
    pd.read_csv(lte_dir / "ElBorn.csv").tail(TRAIN_ROWS).to_csv(paths[0], index=False)
    pd.read_csv(lte_dir / "ElBorn_test.csv").head(TEST_ROWS).to_csv(paths[1], index=False)
    return paths


@pytest.mark.stack
@pytest.mark.parametrize("fault", ["kill-trainer", "kill-dispatcher", "restart-kafka", "s3-outage",
                                   "mlflow-outage", "postgres-outage"])
def test_the_pipeline_heals_itself(chaos_stack, elborn_slice, fault):
    from flts.dev import chaos, stack

    result = chaos.run_fault(chaos_stack, chaos.FAULTS[fault], *elborn_slice, timeout=300)
    print(f"\n{result}")
    assert result.recovery_seconds is not None, "the killed process (or the stopped service) was not back"
    assert result.model_selected == 1 and result.promotions == 1, result
    assert result.dead_letters == [] and result.lost == [], result
    assert result.running_runs == 0, "a run was left RUNNING"
    if fault == "kill-trainer":
        assert result.killed_runs == 1  # the killed trainer's run, marked when its event came again
    states = {r["name"]: r["state"] for r in stack.status(chaos_stack)}
    assert all(states[p.name] == "healthy" for p in stack.plan(chaos_stack)), states


def test_a_function_that_is_down_does_not_make_dead_letters():
    """Connection refused (the supervisor is restarting it) is retried without using up the retries."""
    import httpx
    from cloudevents.http import CloudEvent

    from flts.dev.testing import free_port
    from flts.dispatcher.delivery import deliver
    from flts.dispatcher.settings import DispatchSettings

    settings = DispatchSettings("kafka:9092", max_retries=0, backoff_base=0.05, backoff_max=0.05)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    event = CloudEvent({"type": "test.ping", "source": "/t"}, {})
    with httpx.Client(trust_env=False) as client:
        result = deliver(client, f"http://127.0.0.1:{free_port()}/", event, settings, stop)
    assert result.interrupted and result.attempts > 3 and "ConnectError" in result.error


def _cli_env(monkeypatch, cfg) -> None:
    """`flts ...` in this process talks to the test's stack."""
    env = {"FLTS_STATE": cfg.infra.state_dir, "FLTS_KAFKA_PORT": cfg.infra.kafka_port,
           "FLTS_KAFKA_CONTROLLER_PORT": cfg.infra.kafka_controller_port, "FLTS_S3_PORT": cfg.infra.s3_port,
           "FLTS_PG_PORT": cfg.infra.pg_port, "FLTS_MLFLOW_PORT": cfg.infra.mlflow_port,
           "FLTS_FUNCTION_BASE_PORT": cfg.function_base_port, "FLTS_DISPATCHER_PORT": cfg.dispatcher_port}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))


@pytest.mark.stack
def test_upload_waits_for_the_promotion_and_status_counts_dead_letters(chaos_stack, elborn_slice, monkeypatch,
                                                                       capsys, tmp_path):
    from flts import cli

    _cli_env(monkeypatch, chaos_stack)
    train_csv, test_csv = elborn_slice
    assert cli.main(["upload", str(train_csv), "--test", str(test_csv), "--identifier", "chaos-wait",
                     "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    assert "  preprocessed: 3000 training rows" in out and "  promoted: " in out, out

    bad = tmp_path / "bad.csv"
    bad.write_text("not,a\ntime,series\n")
    assert cli.main(["upload", str(bad), "--identifier", "chaos-bad", "--timeout", "120"]) == 1
    captured = capsys.readouterr()
    assert "error: preprocess dead-lettered flts.dataset.ready into dlq-dataset-ready: HTTP 400" in captured.err
    assert captured.err.rstrip().endswith("(fix the cause, then: flts replay dlq-dataset-ready)")
    assert cli.main(["status", "--json"]) == 3  # a dead letter waits
    before = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["dlq-dataset-ready"]
    assert before["pending"] >= 1 and before["state"] == f"{before['pending']} dead"
    assert cli.main(["replay", "dlq-dataset-ready"]) == 0
    assert f"{before['pending']} replayed, 0 skipped" in capsys.readouterr().out
    # the cause is not fixed: preprocess refuses it again, and it is one pending dead letter again
    deadline = time.monotonic() + 60
    while True:
        cli.main(["status", "--json"])
        after = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["dlq-dataset-ready"]
        if after["total"] == before["total"] + before["pending"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (after["pending"], after["state"]) == (before["pending"], f"{before['pending']} dead"), after
