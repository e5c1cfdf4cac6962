"""Writing CloudEvents to Kafka: the dispatcher's producer, and `publish` for tools (`flts upload`)."""
from __future__ import annotations

from collections.abc import Mapping

from flts import routing
from flts.dispatcher.codec import event_to_kafka
from flts.dispatcher.routes import Routes
from flts.events import MAX_EVENT_BYTES

# Bounded, so that an answer is the truth: the ingress says 202 only once Kafka has the event,
# and 503 only once the producer has given it up (it will not be written later). Both come
# before a function stops waiting for its K_SINK (10 s): otherwise it would retry an event
# that does get written, a duplicate. The producer is idempotent: its own retries never duplicate.
MAX_BLOCK_MS = 2000  # waiting for metadata / buffer space (Kafka unreachable)
REQUEST_TIMEOUT_MS = 4000
DELIVERY_TIMEOUT_MS = 5000  # from send() to the ack, retries included; then the send fails for good
PRODUCE_TIMEOUT_SEC = (MAX_BLOCK_MS + DELIVERY_TIMEOUT_MS) / 1000 + 1.0


class EventProducer:
    """Writes CloudEvents to Kafka and waits for the broker's ack (thread-safe)."""

    def __init__(self, bootstrap_servers: str, client_id: str = "flts-dispatcher"):
        from kafka import KafkaProducer  # imported here: functions never need kafka-python

        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, client_id=client_id, acks="all",
                                       enable_idempotence=True, max_block_ms=MAX_BLOCK_MS,
                                       request_timeout_ms=REQUEST_TIMEOUT_MS, delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                                       max_request_size=4 * MAX_EVENT_BYTES)

    def send_event(self, topic: str, event, wait: bool = True, headers: list[tuple[str, bytes]] = ()):
        """The offset once the broker has it; with wait=False the future (call flush() later).
        `headers` are added to the CloudEvent's own (e.g. the replay's target deployment)."""
        message = event_to_kafka(event)
        key = message.key.encode() if isinstance(message.key, str) else message.key
        return self.send_raw(topic, message.value, key, [*message.headers.items(), *headers], wait)

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
