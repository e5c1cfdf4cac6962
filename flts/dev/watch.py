"""Follow one dataset through the pipeline on Kafka until it is promoted or dead-lettered (`flts upload`).

The watcher notes where the topics end *before* the upload is published, then reads what
comes after: progress (the claim, each trainer's outcome), and the end: `model-selected` for
the identifier (the promoted run), or a dead letter whose event is the identifier's (its
error; `flts replay` puts it back once the cause is fixed).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from flts import events, routing

FOLLOWED = (events.TRAINING_DATA, events.MODEL_TRAINING, events.MODEL_SELECTED)


@dataclass
class Outcome:
    promoted: dict | None = None  # the model-selected pointer
    dead_letter: dict | None = None  # the envelope
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.promoted is not None


class Watch:
    """Reads the followed topics and every dead-letter topic from where they end now."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaConsumer, TopicPartition

        topics = [routing.topic_of(t) for t in FOLLOWED] + [t for t in routing.all_topics() if t.startswith("dlq-")]
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      client_id="flts-upload-watch")
        parts = [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or {0})]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)  # resolve "the end" now, before the upload is published

    def until_outcome(self, identifier: str, timeout: float, echo: Callable[[str], None]) -> Outcome:
        from flts.dispatcher import event_from_kafka

        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for records in self.consumer.poll(timeout_ms=500).values():
                    for record in records:
                        if record.topic.startswith("dlq-"):
                            letter = orjson.loads(record.value)
                            if _identifier_of(letter.get("event")) == identifier:
                                return Outcome(dead_letter=letter)
                            continue
                        event = event_from_kafka(record.headers, record.value)
                        if event["subject"] != identifier:
                            continue
                        echo(_progress(event["type"], event.data))
                        if event["type"] == events.MODEL_SELECTED:
                            return Outcome(promoted=event.data)
            return Outcome(timed_out=True)
        finally:
            self.consumer.close(autocommit=False)


def _identifier_of(event: dict | None) -> str | None:
    if not event:
        return None
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    return event.get("subject") or data.get("identifier")


def _progress(event_type: str, data: dict) -> str:
    if event_type == events.TRAINING_DATA:
        return f"  preprocessed: {data.get('rows')} training rows, {data.get('test_rows')} test rows"
    if event_type == events.MODEL_TRAINING:
        detail = data.get("error") if data.get("status") == "FAILED" else data.get("run_id") or ""
        return f"  train {data.get('model_type')}: {data.get('status')} {detail}".rstrip()
    return f"  promoted: {data.get('model_type')} run {data.get('run_id')} (score {data.get('score')})"
