"""Fault injection on the running local stack: one upload, one fault mid-pipeline, then the count.

A fault is either SIGKILL to a whole process group of the stack (a function process, or the
dispatcher), or an outage of one infrastructure service (Kafka, the S3 server, MLflow,
PostgreSQL): stopped, down for some seconds, started again on the same port and state. It
strikes at a chosen moment of the pipeline. Nobody acts afterwards: the supervisor restarts
a killed process, Kafka redelivers what was not committed, the dispatcher retries what
failed while a service was down, the handlers are idempotent and the dispatcher writes each
outcome once. `run_fault` then reports what came of it: recovered or not, how long the
killed process (or the restarted service) took to be healthy again, how many promotions and
`model-selected` events, duplicates, lost events and dead letters.
Used by tests/test_chaos.py and benchmarks/chaos.py.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from flts import events, forecasters, routing
from flts.dev import infra, processes, stack

TOPICS = (events.TRAINING_DATA, events.MODEL_TRAINING, events.MODEL_SELECTED)


@dataclass(frozen=True)
class Fault:
    name: str
    process: str  # the stack process whose group is killed, or the infrastructure service that goes down
    when: str  # "training" (the victim trainer's MLflow run is RUNNING), "all-training" (every trainer's
    # RUNNING is out) or "any-training" (the first trainer's RUNNING is out)
    outage: float | None = None  # seconds `process` (a service of flts.dev.infra) is down; None = SIGKILL


FAULTS = {
    "kill-trainer": Fault("kill-trainer", "fn-train-gru", "training"),
    "kill-dispatcher": Fault("kill-dispatcher", stack.DISPATCHER, "all-training"),
    "restart-kafka": Fault("restart-kafka", "kafka", "any-training", outage=5.0),
    "s3-outage": Fault("s3-outage", "s3", "any-training", outage=20.0),
    "mlflow-outage": Fault("mlflow-outage", "mlflow", "any-training", outage=20.0),
    "postgres-outage": Fault("postgres-outage", "postgres", "any-training", outage=20.0),
}

_START = {"kafka": infra.start_kafka, "s3": infra.start_s3, "mlflow": infra.start_mlflow,
          "postgres": infra.start_postgres}


@dataclass
class Result:
    fault: str
    identifier: str
    recovered: bool = False  # promoted, nothing lost, no dead letter
    recovery_seconds: float | None = None  # SIGKILL → the killed process healthy again; an outage: its
    # service's start → healthy again
    pipeline_seconds: float | None = None  # upload → model-selected
    promotions: int = 0  # promotion history objects in the promotion bucket
    model_selected: int = 0
    duplicates: int = 0  # events with the same type and data as an earlier one
    lost: list[str] = field(default_factory=list)  # expected events that never came
    dead_letters: list[str] = field(default_factory=list)
    killed_runs: int = 0  # MLflow runs of the identifier marked KILLED
    running_runs: int = 0  # MLflow runs of the identifier still RUNNING at the end


class Reader:
    """The pipeline topics and the dead-letter topics, from where they end now."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaConsumer, TopicPartition

        topics = [routing.topic_of(t) for t in TOPICS] + [t for t in routing.all_topics() if t.startswith("dlq-")]
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        parts = [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or {0})]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)
        self.seen: list[tuple[str, dict]] = []  # (type, data) of the identifier's events; ("dead-letter", envelope)

    def poll(self, identifier: str) -> None:
        from flts.dispatcher import event_from_kafka

        for records in self.consumer.poll(timeout_ms=300).values():
            for record in records:
                if record.topic.startswith("dlq-"):
                    letter = orjson.loads(record.value)
                    if (letter.get("event") or {}).get("subject") == identifier:
                        self.seen.append(("dead-letter", letter))
                    continue
                event = event_from_kafka(record.headers, record.value)
                if event["subject"] == identifier:
                    self.seen.append((event["type"], event.data))

    def until(self, done, identifier: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(identifier)
            if done(self.seen):
                return True
        return False

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _training(seen, model_type: str | None = None) -> set[str]:
    return {d["model_type"] for t, d in seen if t == events.MODEL_TRAINING and d["status"] == "RUNNING"
            and model_type in (None, d["model_type"])}


def _selected(seen) -> list[dict]:
    return [d for t, d in seen if t == events.MODEL_SELECTED]


def _mlflow_runs(cfg: stack.StackConfig, identifier: str, status: str | None = None) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=infra.mlflow_uri(cfg.infra))
    experiment = client.get_experiment_by_name(f"flts-{identifier}")
    if experiment is None:
        return []
    where = f" and attributes.status = '{status}'" if status else ""
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.identifier = '{identifier}'{where}")


def _wait_for_moment(cfg: stack.StackConfig, fault: Fault, reader: Reader, identifier: str, timeout: float) -> None:
    victim_type = fault.process.removeprefix("fn-train-").upper()
    if fault.when == "training":
        def ready(seen):
            return bool(_training(seen, victim_type)) and bool(
                [r for r in _mlflow_runs(cfg, identifier, "RUNNING") if r.data.tags.get("model_type") == victim_type])
    elif fault.when == "any-training":
        def ready(seen):
            return bool(_training(seen))
    else:
        def ready(seen):
            return _training(seen) >= set(forecasters.names())
    if not reader.until(ready, identifier, timeout):
        raise TimeoutError(f"{fault.name}: the moment to strike never came within {timeout:.0f}s")


def service_outage(icfg: infra.InfraConfig, service: str, seconds: float) -> float:
    """Stop `service`, keep it down `seconds`, start it again on the same port and state;
    returns the seconds from its start until it is healthy again."""
    if not infra.stop_service(icfg, service):
        raise RuntimeError(f"{service} does not run")
    try:
        time.sleep(seconds)
    finally:  # interrupted or not, the service comes back: the next fault (or test) needs it
        t0 = time.monotonic()
        _START[service](icfg)  # returns once the service answers its probe
    return time.monotonic() - t0


def _kill_when_ready(cfg: stack.StackConfig, fault: Fault, reader: Reader, identifier: str, timeout: float) -> int:
    """Wait for the fault's moment, then SIGKILL the process group; returns the killed pid."""
    _wait_for_moment(cfg, fault, reader, identifier, timeout)
    pid = stack.running_pid(cfg, fault.process)
    if pid is None:
        raise RuntimeError(f"{fault.process} does not run")
    os.killpg(pid, signal.SIGKILL)
    return pid


def _healthy_again(cfg: stack.StackConfig, name: str, killed: int, timeout: float) -> float | None:
    proc = next(p for p in stack.plan(cfg) if p.name == name)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if stack.running_pid(cfg, name) not in (None, killed) and processes.http_ok(proc.health_url):
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def _promotions(cfg: stack.StackConfig, identifier: str) -> int:
    from flts.storage import store_from_env

    store = store_from_env(infra.client_env(cfg.infra))
    return sum("/promotion-" in key for key in store.list_keys("model-promotion", f"{identifier}/"))


def _count(result: Result, seen: list) -> None:
    result.model_selected = len(_selected(seen))
    result.dead_letters = [f"{d['function']}: {d['error'][:200]}" for t, d in seen if t == "dead-letter"]
    repeats = Counter(orjson.dumps([t, d], option=orjson.OPT_SORT_KEYS) for t, d in seen if t != "dead-letter")
    result.duplicates = sum(n - 1 for n in repeats.values())
    successes = {d["model_type"] for t, d in seen if t == events.MODEL_TRAINING and d["status"] == "SUCCESS"}
    result.lost = ([] if any(t == events.TRAINING_DATA for t, _ in seen) else ["training-data"])
    result.lost += [f"model-training {m} SUCCESS" for m in forecasters.names() if m not in successes]
    result.lost += [] if result.model_selected else ["model-selected"]


def run_fault(cfg: stack.StackConfig, fault: Fault, train_csv: Path, test_csv: Path, timeout: float = 300.0,
              linger: float = 10.0) -> Result:
    """Upload, strike, wait for the promotion (then `linger` seconds for late duplicates), count."""
    identifier = f"chaos-{fault.name}-{uuid.uuid4().hex[:6]}"
    result = Result(fault.name, identifier)
    reader = Reader(infra.kafka_bootstrap(cfg.infra))
    try:
        started = time.monotonic()
        stack.upload(cfg, train_csv, test_csv, identifier)
        if fault.outage is None:
            killed = _kill_when_ready(cfg, fault, reader, identifier, timeout)
            result.recovery_seconds = _healthy_again(cfg, fault.process, killed, timeout)
        else:
            _wait_for_moment(cfg, fault, reader, identifier, timeout)
            result.recovery_seconds = service_outage(cfg.infra, fault.process, fault.outage)
        if reader.until(lambda seen: _selected(seen), identifier, timeout - (time.monotonic() - started)):
            result.pipeline_seconds = time.monotonic() - started
        reader.until(lambda seen: False, identifier, linger)  # late duplicates or dead letters
    finally:
        reader.close()
    _count(result, reader.seen)
    result.promotions = _promotions(cfg, identifier)
    result.killed_runs = len(_mlflow_runs(cfg, identifier, "KILLED"))
    result.running_runs = len(_mlflow_runs(cfg, identifier, "RUNNING"))
    result.recovered = bool(result.model_selected and not result.lost and not result.dead_letters
                            and result.recovery_seconds is not None)
    return result
