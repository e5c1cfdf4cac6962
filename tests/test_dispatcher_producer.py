"""The dispatcher's producer (confluent-kafka) against real Kafka: where records land, what a send answers.

Records must land where kafka-python's (and Java's) producer puts them, murmur2 of the key: a
dataset's events stay on one partition whoever writes them (the ingress, `flts upload`, a test).
"""
from __future__ import annotations

import socket
import time
import uuid

import pytest
from kafka.partitioner.default import murmur2

from flts import events
from flts.dev import infra as fi
from flts.dev.testing import read_records
from flts.dispatcher.producer import EAGER_BELOW, PRODUCE_TIMEOUT_SEC, EventProducer

pytestmark = pytest.mark.stack
PARTITIONS = 4


def ready(identifier: str):
    data = events.DatasetReady(bucket="raw-data", object_key=f"{identifier}/x.csv", identifier=identifier)
    return events.make_event(events.DATASET_READY, "test", data)


def read_all(bootstrap: str, topic: str, count: int) -> list:
    return read_records(bootstrap, topic, count, timeout=30)


def test_keys_land_on_the_murmur2_partition_with_headers_and_offsets(infra):
    topic = f"t-{uuid.uuid4().hex[:10]}-prod"
    fi.create_topics(infra, [topic], partitions=PARTITIONS)
    bootstrap = fi.kafka_bootstrap(infra)
    producer = EventProducer(bootstrap, client_id="test-producer")
    try:
        sent = [ready(f"ds-{i}") for i in range(24)]
        offsets = [producer.send_event(topic, event, headers=[("flts_root", b"r")]) for event in sent[:4]]
        futures = [producer.send_event(topic, event, wait=False) for event in sent[4:]]
        producer.flush()
        assert all(isinstance(o, int) and o >= 0 for o in offsets + [f.get(1) for f in futures])
    finally:
        producer.close()
    records = read_all(bootstrap, topic, len(sent))
    assert len(records) == len(sent)
    for record in records:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % PARTITIONS, record.key
    first = next(r for r in records if r.key == b"ds-0")
    headers = dict(first.headers)
    assert headers["ce_type"] == events.DATASET_READY.encode() and headers["flts_root"] == b"r"
    assert headers["ce_id"].decode() == sent[0]["id"]


def test_a_send_kafka_never_takes_fails_within_the_bound():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    producer = EventProducer(f"127.0.0.1:{port}", client_id="test-unreachable")
    try:
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - a KafkaException (timed out), or our TimeoutError
            producer.send_raw("nowhere", b"{}", b"k")
        assert time.monotonic() - started <= PRODUCE_TIMEOUT_SEC + 1
    finally:
        producer.close()


def test_a_lone_synchronous_write_skips_the_linger_and_a_busy_one_shares_it():
    """Batching waits LINGER_MS for company; one delivery at a time must not pay it on every write. Per key the
    order holds: the eager producer is chosen only while the batching one has nothing in flight."""
    producer = EventProducer("127.0.0.1:9", client_id="test-choice")  # librdkafka connects lazily: nothing is sent
    try:
        assert producer._writer_for(wait=True) is producer._eager
        assert producer._writer_for(wait=False) is producer._batching, "a future the caller does not wait for"
        producer._eager.in_flight = EAGER_BELOW
        assert producer._writer_for(wait=True) is producer._batching, "many writes at once: batched"
        producer._eager.in_flight, producer._batching.in_flight = 0, 1
        assert producer._writer_for(wait=True) is producer._batching, "an eager write could overtake a batched one"
    finally:
        producer._eager.in_flight = producer._batching.in_flight = 0
        producer.close()
