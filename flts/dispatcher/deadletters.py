"""Dead letters: how many wait in each `dlq-<topic>`, and replaying them onto their topic.

A dead letter is *pending* until `replay` has put its event back: replay reads the DLQ as
the consumer group `flts-replay` and commits each letter once its event is on the original
topic again, so replaying twice re-publishes nothing the second time. Pending = the DLQ's end
offset minus that group's committed offset (or the log start, when older letters expired).
The replayed event keeps its id, and goes to the deployment that dead-lettered it only: the
record carries the header `flts_replay_for: <deployment>`, and the other deployments that read
that topic (which settled it the first time) pass it by. If it fails again it becomes a new,
pending dead letter.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from cloudevents.http import from_dict

from flts.dispatcher.producer import EventProducer
from flts.events import EventError

REPLAY_GROUP = "flts-replay"
REPLAY_FOR_HEADER = "flts_replay_for"  # the one deployment a replayed record is for
REPLAY_TIMEOUT_SEC = 60.0


@dataclass
class Count:
    pending: int = 0  # not replayed yet
    total: int = 0  # still in the topic (Kafka's retention decides how long)


@dataclass
class Replayed:
    offset: int  # in the DLQ
    event_id: str | None
    event_type: str | None
    topic: str | None  # where it went back to; None when it could not be replayed
    error: str  # the dead letter's own error (why it was dead-lettered)
    skipped: str | None = None  # why it was not replayed (no event: the message was not a CloudEvent)


def _consumer(bootstrap: str):
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=REPLAY_GROUP, enable_auto_commit=False,
                         auto_offset_reset="earliest", client_id="flts-deadletters")


def _partitions(consumer, topic: str) -> list:
    from kafka import TopicPartition

    found = consumer.partitions_for_topic(topic)
    if not found:
        raise EventError(f"no topic {topic!r} on Kafka")
    return [TopicPartition(topic, p) for p in sorted(found)]


def count(bootstrap: str, topics: list[str]) -> dict[str, Count]:
    """Pending and total dead letters per DLQ topic (a topic that does not exist yet counts 0)."""
    consumer = _consumer(bootstrap)
    try:
        counts = {topic: Count() for topic in topics}
        parts = [tp for topic in topics if consumer.partitions_for_topic(topic) for tp in _partitions(consumer, topic)]
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        for tp in parts:
            done = max(consumer.committed(tp) or 0, starts[tp])
            counts[tp.topic].pending += max(0, ends[tp] - done)
            counts[tp.topic].total += ends[tp] - starts[tp]
        return counts
    finally:
        consumer.close(autocommit=False)


def replay(bootstrap: str, dlq: str) -> list[Replayed]:
    """Put every pending dead letter of `dlq` back onto its original topic, committing each one after
    it is written (a crash in between replays that one letter again: handlers are idempotent)."""
    from kafka import OffsetAndMetadata

    if not dlq.startswith("dlq-"):
        raise EventError(f"{dlq!r} is not a dead-letter topic (they are named dlq-<topic>)")
    consumer, producer = _consumer(bootstrap), EventProducer(bootstrap, client_id="flts-replay")
    try:
        parts = _partitions(consumer, dlq)
        consumer.assign(parts)  # assigned, not subscribed: no group join, yet commits are the group's
        ends = consumer.end_offsets(parts)
        done: list[Replayed] = []
        deadline = time.monotonic() + REPLAY_TIMEOUT_SEC
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dlq}: could not read to its end within {REPLAY_TIMEOUT_SEC:.0f}s "
                                   f"({len(done)} replayed; run it again to go on)")
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue  # written after we started: the next replay's
                    done.append(_replay_one(producer, record))
                    consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
        return done
    finally:
        producer.close()
        consumer.close(autocommit=False)


def _replay_one(producer: EventProducer, record) -> Replayed:
    letter = orjson.loads(record.value)
    event = letter.get("event")
    if event is None:
        return Replayed(record.offset, None, None, None, letter.get("error", ""),
                        skipped="not a CloudEvent when it arrived (its raw value stays in the DLQ)")
    for_deployment = [(REPLAY_FOR_HEADER, letter["function"].encode())] if letter.get("function") else []
    producer.send_event(letter["topic"], from_dict(event), headers=for_deployment)
    return Replayed(record.offset, event["id"], event["type"], letter["topic"], letter.get("error", ""))
