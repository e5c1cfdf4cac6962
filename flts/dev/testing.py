"""Helpers for tests and the benchmark: tiny ONNX models that honour the serving contract,
promotion the way eval writes it, and a uvicorn server in a background thread.

Never imported by the request path (it imports onnx).
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import UTC, datetime

import numpy as np

from flts import forecasters
from flts.events import PromotionPointer
from flts.promotion import GLOBAL, current_key, history_key
from flts.storage import ObjectStore, put_json

LTE_FEATURES = ("down", "up", "rnti_count", "mcs_down", "mcs_down_var", "mcs_up", "mcs_up_var",
                "rb_down", "rb_down_var", "rb_up", "rb_up_var", "minute_sin", "minute_cos", "dow_sin", "dow_cos")


def persistence_onnx(input_seq_len: int, n_features: int, output_seq_len: int, target_index: int = 0,
                     factor: float = 1.0, bias: float = 0.0) -> bytes:
    """forecast[b, k] = factor * x[b, -1, target_index] + bias * (k + 1): predictable values."""
    import onnx
    from onnx import TensorProto, helper

    weights = np.zeros((n_features, output_seq_len), np.float32)
    weights[target_index, :] = factor
    offsets = bias * np.arange(1, output_seq_len + 1, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["input", "last"], ["last_row"], axis=1),
            helper.make_node("MatMul", ["last_row", "weights"], ["scaled"]),
            helper.make_node("Add", ["scaled", "offsets"], ["forecast"]),
        ],
        "persistence",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", input_seq_len, n_features])],
        [helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", output_seq_len])],
        initializer=[
            helper.make_tensor("last", TensorProto.INT64, [], [input_seq_len - 1]),
            onnx.numpy_helper.from_array(weights, "weights"),
            onnx.numpy_helper.from_array(offsets, "offsets"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def promote(store: ObjectStore, model_bytes: bytes, *, identifier: str = "PobleSec", run_id: str = "run-1",
            input_seq_len: int = 10, output_seq_len: int = 3, feature_columns=LTE_FEATURES, target: str = "down",
            frequency_seconds: float | None = 120.0, model_type: str = "GRU", artifact_format: str = "onnx",
            promotion_bucket: str = "model-promotion", artifact_bucket: str = "model-promotion",
            timestamp: str | None = None, write_pointer: bool = True,
            intervals: dict | None = None) -> PromotionPointer:
    """Store an artifact and its pointer where eval puts them; returns the pointer."""
    config_hash = "c0ffee" + run_id.encode().hex()[:10].ljust(10, "0")
    artifact_key = f"models/{identifier}/{run_id}/{forecasters.artifact_format(artifact_format).model_file}"
    store.ensure_bucket(artifact_bucket)
    store.put_bytes(artifact_bucket, artifact_key, model_bytes)
    pointer = PromotionPointer(
        identifier=identifier, config_hash=config_hash, run_id=run_id, model_type=model_type,
        experiment="test", model_uri=f"runs:/{run_id}/{model_type}", rmse=1.0, mae=1.0, mse=1.0, score=1.0,
        timestamp=timestamp or datetime.now(UTC).isoformat(), weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
        artifact_bucket=artifact_bucket, artifact_key=artifact_key, artifact_format=artifact_format,
        input_seq_len=input_seq_len, output_seq_len=output_seq_len, feature_columns=list(feature_columns),
        target=target, timestamp_column="time", frequency_seconds=frequency_seconds, intervals=intervals,
    )
    if write_pointer:
        store.ensure_bucket(promotion_bucket)
        body = pointer.model_dump(mode="json", exclude_none=True)
        put_json(store, promotion_bucket, history_key(identifier, config_hash, pointer.timestamp), body)
        for key in (current_key(identifier), current_key(GLOBAL), current_key()):
            put_json(store, promotion_bucket, key, body)
    return pointer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app, port: int | None = None, timeout: float = 20.0):
    """Serve `app` with uvicorn (httptools + uvloop) in a thread; yields the base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                            lifespan="on", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def stack_pids(cfg) -> set[int]:
    """Every process of a local stack (flts.dev.stack.StackConfig) that is alive now: each supervised
    process group's members (every replica's: the saved plan), and what runs in a process's folder
    (infer runs in a session of its own)."""
    from flts.dev import processes, stack

    pids = set()
    for proc in stack.planned(cfg):
        pid = stack.running_pid(cfg, proc.name)
        if pid is not None:
            pids |= {pid, *processes.group_members(pid)}
        pids |= set(processes.pids_in(stack.workdir(cfg, proc.name)))
    return pids


def read_records(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list:
    """The first `count` records of every partition of a topic (waits up to `timeout`), with kafka-python."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records, deadline = [], time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close(autocommit=False)
