"""Two preprocess replicas on the real local stack: one consumer group with two members, each
replica gets datasets, one dataset's events keep their order, `flts status` reports replicas and lag."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from flts import events, routing
from flts.dev import infra as fi
from flts.dev import processes, stack
from flts.dev.infra.kafka import partition_counts
from flts.dev.testing import stack_pids
from flts.dispatcher import EventProducer

PARTITIONS = 4
EVENTS_PER_DATASET = 3  # the first is preprocessed, the repeats re-announce it (skip_idempotent)


def _identifiers_on_every_partition(topic_partitions: int) -> list[str]:
    """One dataset identifier per partition (the producer's murmur2 of the key), so both replicas get some."""
    from kafka.partitioner.default import murmur2

    tag, found, n = uuid.uuid4().hex[:6], {}, 0
    while len(found) < topic_partitions:
        identifier = f"rep-{tag}-{n}"
        found.setdefault((murmur2(identifier.encode()) & 0x7FFFFFFF) % topic_partitions, identifier)
        n += 1
    return [found[p] for p in sorted(found)]


def _delivered(cfg: stack.StackConfig, ids: set[str]) -> list[dict]:
    """The dispatcher's `dispatch_delivered` lines for our events, in the order they were logged."""
    lines = []
    for line in cfg.infra.log_file(stack.DISPATCHER).read_text().splitlines():
        if '"dispatch_delivered"' in line:
            entry = json.loads(line)
            if entry["event_id"] in ids:
                lines.append(entry)
    return lines


def _wait(predicate, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return found


@pytest.mark.stack
def test_two_replicas_share_one_group_and_keep_each_datasets_order(infra, lte_dir, tmp_path, monkeypatch):
    base = stack.free_port_block(2 * len(routing.DEPLOYMENTS) + 1)
    cfg = stack.StackConfig(infra=infra, function_base_port=base + 1, dispatcher_port=base)
    # a group of our own, starting at the end: events other tests left on the topics are not ours
    monkeypatch.setenv("DISPATCH_GROUP_PREFIX", f"test-{uuid.uuid4().hex[:8]}-")
    monkeypatch.setenv("DISPATCH_OFFSET_RESET", "latest")
    monkeypatch.setenv("FLTS_TOPIC_PARTITIONS", str(PARTITIONS))
    csv = tmp_path / "slice.csv"  # a small slice: preprocess takes ~1 s, so the test is about the routing
    csv.write_text("".join((lte_dir / "PobleSec.csv").read_text().splitlines(keepends=True)[:601]))
    pids: set[int] = set()
    try:
        procs = stack.up(cfg, ["preprocess"], with_infra=False, replicas={"preprocess": 2})
        assert [p.name for p in procs] == ["fn-preprocess", "fn-preprocess-2", "dispatcher"]
        pids = stack_pids(cfg)
        assert partition_counts(infra, ["dataset-ready"]) == {"dataset-ready": PARTITIONS}
        # one consumer per replica, one group, the partitions shared out: two each, none twice
        consumers = _wait(lambda: _shared(procs[-1]), "the partitions shared out", 30)
        assert set(consumers) == {"preprocess", "preprocess-2"} and len({c["group"] for c in consumers.values()}) == 1

        sent = _send(cfg, csv, _identifiers_on_every_partition(PARTITIONS))
        ids = {event_id for per in sent.values() for event_id in per}
        delivered = _wait(lambda: _all_delivered(cfg, ids), "every delivery", 90)
        assert all(200 <= d["status"] < 300 for d in delivered)
        by_replica = {name: {d["key"] for d in delivered if d["replica"] == name} for name in ("preprocess", "preprocess-2")}
        assert all(by_replica.values()), f"a replica got no dataset: {by_replica}"
        assert not by_replica["preprocess"] & by_replica["preprocess-2"]  # a dataset stays on one replica
        for identifier, ids_in_order in sent.items():
            assert [d["event_id"] for d in delivered if d["key"] == identifier] == ids_in_order
        for name, identifiers in (("fn-preprocess", by_replica["preprocess"]),
                                  ("fn-preprocess-2", by_replica["preprocess-2"])):
            log = cfg.infra.log_file(name).read_text()
            assert all(identifier in log for identifier in identifiers), f"{name} did not handle its datasets"

        row = _wait(lambda: _caught_up(cfg, "fn-preprocess"), "lag 0", 30)
        assert (row["replicas_up"], row["replicas"], row["consumers"]) == (2, 2, 2)
        assert row["group"] == consumers["preprocess"]["group"]
        table = stack.format_status(stack.status(cfg))
        print(table)  # the sample in the report
        assert next(line for line in table.splitlines() if line.startswith("fn-preprocess ")).split()[3:5] == ["2/2", "0"]
    finally:
        stopped = stack.down(cfg, with_infra=False)
    assert {"dispatcher", "fn-preprocess", "fn-preprocess-2"} <= set(stopped)
    assert not any(processes.pid_alive(pid) for pid in pids), "a replica outlived `down`"


def _shared(dispatcher: stack.Process) -> dict | None:
    """The dispatcher's consumers once each has half of dataset-ready's partitions, else None."""
    consumers = json.loads(processes.http_get(dispatcher.health_url, 5.0)[1])["consumers"]
    shares = [set(c["assigned"]) for c in consumers.values()]
    whole = {f"dataset-ready/{p}" for p in range(PARTITIONS)}
    return consumers if [len(s) for s in shares] == [2, 2] and set.union(*shares) == whole else None


def _send(cfg: stack.StackConfig, csv, identifiers: list[str]) -> dict[str, list[str]]:
    """Upload the slice once per identifier, then announce it EVENTS_PER_DATASET times, interleaved
    across datasets; returns identifier → event ids in the order they were written."""
    sent: dict[str, list[str]] = {}
    for identifier in identifiers:
        event, _topic, _offset = stack.upload(cfg, csv, identifier=identifier)
        sent[identifier] = [event["id"]]
    producer = EventProducer(fi.kafka_bootstrap(cfg.infra), client_id="test-replicas")
    try:
        for _ in range(EVENTS_PER_DATASET - 1):
            for identifier in identifiers:
                data = events.DatasetReady(bucket=stack.RAW_BUCKET, object_key=f"{identifier}/{csv.name}",
                                           identifier=identifier)
                event = events.make_event(events.DATASET_READY, "upload", data)
                producer.send_event(routing.topic_of(events.DATASET_READY), event)
                sent[identifier].append(event["id"])
    finally:
        producer.close()
    return sent


def _all_delivered(cfg: stack.StackConfig, ids: set[str]) -> list[dict] | None:
    delivered = _delivered(cfg, ids)
    return delivered if len(delivered) == len(ids) else None


def _caught_up(cfg: stack.StackConfig, name: str) -> dict | None:
    """The status row of `name` once its group has committed everything (commits are asynchronous)."""
    row = next(r for r in stack.status(cfg) if r["name"] == name)
    return row if row.get("lag") == 0 else None
