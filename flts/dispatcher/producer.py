"""Writing CloudEvents to Kafka: the dispatcher's producer, and `publish` for tools (`flts upload`)."""
from __future__ import annotations

from collections.abc import Mapping

from flts import routing
from flts.dispatcher.codec import event_to_kafka
from flts.dispatcher.routes import Routes
from flts.events import MAX_EVENT_BYTES

PRODUCE_TIMEOUT_SEC = 30.0


class EventProducer:
    """Writes CloudEvents to Kafka and waits for the broker's ack (thread-safe)."""

    def __init__(self, bootstrap_servers: str, client_id: str = "flts-dispatcher"):
        from kafka import KafkaProducer  # imported here: functions never need kafka-python

        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, client_id=client_id, acks="all",
                                       max_request_size=4 * MAX_EVENT_BYTES)

    def send_event(self, topic: str, event, wait: bool = True):
        """The offset once the broker has it; with wait=False the future (call flush() later)."""
        message = event_to_kafka(event)
        key = message.key.encode() if isinstance(message.key, str) else message.key
        return self.send_raw(topic, message.value, key, list(message.headers.items()), wait)

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None, headers=None, wait: bool = True):
        future = self._producer.send(topic, value=value, key=key, headers=headers or [])
        return future.get(timeout=PRODUCE_TIMEOUT_SEC).offset if wait else future

    def flush(self) -> None:
        self._producer.flush(timeout=PRODUCE_TIMEOUT_SEC)

    def close(self) -> None:
        self._producer.close(timeout=5)


def publish(bootstrap_servers: str, event, topics: Mapping[str, str] = routing.TOPICS) -> tuple[str, int]:
    """Write one event to the topic of its type; returns (topic, offset). For `flts upload` and tools."""
    topic = Routes(topics).topic_of(event["type"])
    producer = EventProducer(bootstrap_servers, client_id="flts-publish")
    try:
        return topic, producer.send_event(topic, event)
    finally:
        producer.close()
