"""The local full stack: function processes, the dispatcher, `flts up/down/status/upload`.

The full-stack test runs the real preprocess function as its own functions-framework
process behind the real dispatcher, on the session's Kafka and S3 server, with the real
PobleSec data; the others check planning, entry-point discovery and error messages.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import time
import uuid

import pyarrow.parquet as pq
import pytest

from flts import cli, events, forecasters, routing
from flts.dev import infra as fi
from flts.dev import processes, stack, supervise
from flts.dispatcher import event_from_kafka
from flts.spec import Scaling
from flts.storage import InvalidKey, store_from_env


@pytest.fixture
def offline_cfg(tmp_path):
    """A stack config on a private state dir; nothing is started."""
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    return stack.StackConfig(infra=fi.InfraConfig(state_dir=tmp_path / "state"), function_base_port=base + 1,
                             dispatcher_port=base)


# --------------------------------------------------------------------------- no services
def test_plan_gives_every_deployment_its_process_port_and_env(offline_cfg):
    procs = stack.plan(offline_cfg)
    functions = [p for p in procs if p.kind == "function"]
    assert [p.name for p in functions] == [f"fn-{d.name}" for d in routing.DEPLOYMENTS]
    assert [p.port for p in functions] == [offline_cfg.function_base_port + i for i in range(len(functions))]
    by_name = {p.name: p for p in procs}
    for model in forecasters.names():
        assert by_name[f"fn-train-{model.lower()}"].env["MODEL_TYPE"] == model
    for p in functions:
        takes = routing.deployment(p.name.removeprefix("fn-")).subscribes  # the gateway starts chains: the plain `/`
        assert p.env["K_SINK"] == (f"{offline_cfg.ingress_url}from/{p.name.removeprefix('fn-')}" if takes
                                   else offline_cfg.ingress_url)
        assert p.env["KAFKA_BOOTSTRAP_SERVERS"] == fi.kafka_bootstrap(offline_cfg.infra)
        assert p.env["S3_ENDPOINT"] and p.env["MLFLOW_TRACKING_URI"]
    pre = by_name["fn-preprocess"]
    assert pre.command[-6:] == ["--target", "preprocess", "--host", "127.0.0.1", "--port",
                                                        str(pre.port)]
    assert by_name["fn-infer"].command[1:3] == ["-m", "flts.dev.frontdoor"]  # a request server: scale to zero
    assert by_name["fn-infer"].scale_to_zero and by_name["fn-infer"].health_url.endswith("/_frontdoor/status")
    gateway = by_name["fn-gateway"]  # a request server that takes no events: always up, not behind the door
    assert gateway.command[1:3] == ["-m", "uvicorn"] and not gateway.scale_to_zero
    assert gateway.health_url == gateway.url.rstrip("/") + "/healthz"
    dispatcher = by_name["dispatcher"]
    targets = dispatcher.env["DISPATCH_TARGETS"].split(",")
    assert targets == [f"{p.name[3:]}={p.url}" for p in functions if p.name != "fn-gateway"]
    assert dispatcher.env["DISPATCH_INGRESS_PORT"] == str(offline_cfg.dispatcher_port)


def test_plan_refuses_unknown_deployments(offline_cfg):
    with pytest.raises(stack.ConfigError, match="unknown deployment"):
        stack.plan(offline_cfg, ["preprocess", "nope"])


def test_every_function_process_serves_the_entry_its_spec_names(offline_cfg):
    """The plan comes from the specs: each event function runs its spec's server on its main.py."""
    for proc, deployment in zip(stack.plan(offline_cfg), routing.DEPLOYMENTS, strict=False):
        spec = deployment.spec
        if proc.scale_to_zero:
            assert spec.scaling is Scaling.REQUEST_SERVER
            continue
        source = stack.FUNCTIONS_DIR / spec.name / "main.py"
        assert proc.command == spec.server_command(offline_cfg.host, proc.port, str(source.parent)) and source.is_file()


def test_port_in_use_is_reported_clearly(offline_cfg):
    proc = next(p for p in stack.plan(offline_cfg) if p.name == "fn-preprocess")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", proc.port))
        blocker.listen()
        with pytest.raises(stack.StackError, match=f"port {proc.port} is in use.*FLTS_FUNCTION_BASE_PORT"):
            stack.start_process(offline_cfg, proc)
    assert stack.running_pid(offline_cfg, proc.name) is None


def test_upload_refuses_bad_input_before_touching_anything(offline_cfg, lte_dir, tmp_path):
    with pytest.raises(stack.StackError, match="no such file"):
        stack.upload(offline_cfg, tmp_path / "absent.csv")
    with pytest.raises((InvalidKey, stack.StackError), match=r"'\.\.'"):
        stack.upload(offline_cfg, lte_dir / "PobleSec.csv", identifier="..")


def test_status_cli_when_nothing_runs(offline_cfg, monkeypatch, capsys):
    monkeypatch.setenv("FLTS_STATE", str(offline_cfg.infra.state_dir))
    for name, port in (("FLTS_KAFKA_PORT", 1), ("FLTS_S3_PORT", 3), ("FLTS_PG_PORT", 4), ("FLTS_MLFLOW_PORT", 5)):
        monkeypatch.setenv(name, str(offline_cfg.dispatcher_port + 100 + port))
    monkeypatch.setenv("FLTS_FUNCTION_BASE_PORT", str(offline_cfg.function_base_port))
    monkeypatch.setenv("FLTS_DISPATCHER_PORT", str(offline_cfg.dispatcher_port))
    assert cli.main(["status", "--json"]) == 3
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["kafka"]["state"] == "stopped" and rows["dispatcher"]["state"] == "stopped"
    assert rows["fn-preprocess"]["url"] == f"http://127.0.0.1:{offline_cfg.function_base_port}/"
    assert cli.main(["down", "--keep-infra"]) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_status_tells_an_orphan_from_a_stopped_process(offline_cfg, tmp_path):
    """No supervisor runs, yet something of fn-preprocess does: in its folder, on its port."""
    proc = next(p for p in stack.plan(offline_cfg) if p.name == "fn-preprocess")
    command = [sys.executable, "-m", "http.server", str(proc.port), "--bind", "127.0.0.1"]
    with processes.running(command, ready_url=proc.url, cwd=stack.workdir(offline_cfg, proc.name),
                           log_path=tmp_path / "orphan.log") as orphan:
        rows = {r["name"]: r for r in stack.status(offline_cfg)}
        assert rows["fn-preprocess"]["state"] == "ORPHANED" and rows["fn-preprocess"]["pid"] == orphan.pid
        assert rows["fn-eval"]["state"] == "stopped" and rows["supervisor"]["state"] == "stopped"
        assert "without the supervisor" in rows["fn-preprocess"]["note"]
        assert stack.down(offline_cfg, with_infra=False) == ["fn-preprocess"]  # `down` ends the orphan too
        assert orphan.wait(10) is not None


def test_cli_errors_are_one_line(offline_cfg, monkeypatch, capsys):
    monkeypatch.setenv("FLTS_STATE", str(offline_cfg.infra.state_dir))
    assert cli.main(["restart", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no process 'nope' in the running stack") and err.count("\n") == 1
    assert cli.main(["replay", "dataset-ready"]) == 1
    assert capsys.readouterr().err == "error: 'dataset-ready' is not a dead-letter topic (they are named dlq-<topic>)\n"


# --------------------------------------------------------------------------- the real stack
def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _claim_for(bootstrap: str, identifier: str, timeout: float = 180.0):
    """The first `flts.training-data` event on its topic whose subject is `identifier`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    topic = routing.topic_of(events.TRAINING_DATA)  # its partitions: FLTS_TOPIC_PARTITIONS
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = event_from_kafka(record.headers, record.value)
                    if event["subject"] == identifier:
                        return event, record
        raise AssertionError(f"no training-data claim for {identifier} within {timeout:.0f}s")
    finally:
        consumer.close(autocommit=False)


@pytest.mark.stack
def test_preprocess_through_the_full_stack_on_poblesec(infra, lte_dir, monkeypatch):
    base = stack.free_port_block(len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=infra, function_base_port=base + 1, dispatcher_port=base)
    # a group of our own, starting at the end: events other tests left on the topics are not ours
    monkeypatch.setenv("DISPATCH_GROUP_PREFIX", f"test-{uuid.uuid4().hex[:8]}-")
    monkeypatch.setenv("DISPATCH_OFFSET_RESET", "latest")
    identifier = f"PobleSec-{uuid.uuid4().hex[:8]}"
    group_pids: set[int] = set()
    try:
        first = stack.up(cfg, ["preprocess", "eval"], with_infra=False)
        assert [p.name for p in first] == ["fn-preprocess", "fn-eval", "dispatcher"]
        before = {p.name: stack.running_pid(cfg, p.name) for p in first}
        # a smaller plan: eval goes, the dispatcher restarts with fewer targets, preprocess stays
        procs = stack.up(cfg, ["preprocess"], with_infra=False)
        pids = {p.name: stack.running_pid(cfg, p.name) for p in procs}
        assert stack.running_pid(cfg, "fn-eval") is None and not processes.pid_alive(before["fn-eval"])
        assert pids["fn-preprocess"] == before["fn-preprocess"] and pids["dispatcher"] != before["dispatcher"]
        assert stack.up(cfg, ["preprocess"], with_infra=False) and \
            {p.name: stack.running_pid(cfg, p.name) for p in procs} == pids  # idempotent: same processes
        states = {r["name"]: r["state"] for r in stack.status(cfg)}
        assert states["fn-preprocess"] == states["dispatcher"] == states["kafka"] == states["supervisor"] == "healthy"
        assert states["dlq-dataset-ready"] in ("empty", *(f"{n} dead" for n in range(1, 100)))

        # kill -9 a whole function process and the dispatcher: the supervisor starts them again
        for name in ("fn-preprocess", "dispatcher"):
            group_pids |= set(processes.group_members(pids[name]))
            os.killpg(pids[name], signal.SIGKILL)
        procs_by_name = {p.name: p for p in procs}
        _wait(lambda: all(stack.running_pid(cfg, n) not in (None, pids[n]) for n in pids), "restarts")
        stack.wait_healthy(cfg, [procs_by_name["fn-preprocess"], procs_by_name["dispatcher"]], timeout=120)
        pids = {p.name: stack.running_pid(cfg, p.name) for p in procs}
        restarted = stack.restart(cfg, "preprocess")  # by hand: one command
        assert restarted.name == "fn-preprocess" and stack.running_pid(cfg, "fn-preprocess") != pids["fn-preprocess"]
        group_pids |= set(pids.values())
        pids = {p.name: stack.running_pid(cfg, p.name) for p in procs}

        # the supervisor itself killed: its processes run on, orphaned, and status says so; `up` heals
        group_pids |= {pid for pid in pids.values() for pid in processes.group_members(pid)}
        os.kill(supervise.pid(cfg.infra.state_dir), signal.SIGKILL)
        _wait(lambda: supervise.pid(cfg.infra.state_dir) is None, "the supervisor gone")
        rows = {r["name"]: r for r in stack.status(cfg)}
        assert rows["supervisor"]["state"] == "stopped"
        assert rows["fn-preprocess"]["state"] == rows["dispatcher"]["state"] == "ORPHANED"
        stack.up(cfg, ["preprocess"], with_infra=False)
        assert not any(processes.pid_alive(pid) for pid in pids.values()), "an orphan survived `up`"
        states = {r["name"]: r["state"] for r in stack.status(cfg)}
        assert states["fn-preprocess"] == states["dispatcher"] == states["supervisor"] == "healthy"
        pids = {p.name: stack.running_pid(cfg, p.name) for p in procs}

        ready, topic, _offset = stack.upload(cfg, lte_dir / "PobleSec.csv", lte_dir / "PobleSec_test.csv", identifier)
        assert topic == "dataset-ready" and ready.data["identifier"] == identifier

        claim, record = _claim_for(fi.kafka_bootstrap(infra), identifier)
        assert record.key == identifier.encode()  # keyed by dataset: one dataset's events stay in order
        data = events.parse_data(claim, (events.TRAINING_DATA,))
        assert claim["source"] == "/flts/preprocess" and data.bucket == "processed-data"
        store = store_from_env(fi.client_env(infra))
        train = pq.read_table(io.BytesIO(store.get_bytes(data.bucket, data.object_key)))
        test = pq.read_table(io.BytesIO(store.get_bytes(data.bucket, data.test_object_key)))
        assert train.num_rows == data.rows > 1000 and test.num_rows == data.test_rows > 100
        assert {"down", "minute_sin", "minute_cos", "dow_sin", "dow_cos"} <= set(train.column_names)
        assert data.object_key.startswith(f"{identifier}/{data.config_hash}/")
        group_pids |= {pid for pid in pids.values() for pid in processes.group_members(pid)}
        assert len(group_pids) >= 3  # gunicorn master + worker, and the dispatcher
    finally:
        stopped = stack.down(cfg, with_infra=False)
    assert set(stopped) >= {"dispatcher", "fn-preprocess"}
    assert not any(processes.pid_alive(pid) for pid in group_pids), "a stack process outlived `down`"
    assert all(r["healthy"] for r in fi.status(infra))  # `down --keep-infra` leaves the services alone
