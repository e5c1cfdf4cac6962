"""Writing CloudEvents to Kafka: the dispatcher's producer, and `publish` for tools (`flts upload`).

The producer is confluent-kafka's (librdkafka, in C): every delivery's replies go through it,
and kafka-python's pure-Python producer (record batches built and check-summed byte by byte
under the GIL) cost more CPU than all the rest of a delivery. librdkafka batches the
records of concurrent deliveries into one request, off the GIL; a thread of ours serves its
delivery reports. Batching means a write waits LINGER_MS for company, which a lone write (one
delivery at a time, DISPATCH_CONCURRENCY=1, one dataset's chain) must not pay: a synchronous
write while few are in flight goes out through a second producer that does not linger.
Per key, writes keep their order: a synchronous one has its ack before the caller writes again,
and the eager producer is used only while the batching one has nothing in flight. Keys are
hashed with murmur2, as Java's and kafka-python's producers do, so a dataset's events land
on the same partition whoever writes them.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from flts import routing
from flts.dispatcher.codec import event_to_kafka
from flts.dispatcher.routes import Routes
from flts.events import MAX_EVENT_BYTES

# Bounded, so that an answer is the truth: the ingress says 202 only once Kafka has the event,
# and 503 only once the producer has given it up (it will not be written later). Both come
# before a function stops waiting for its K_SINK (10 s): otherwise it would retry an event
# that does get written, a duplicate. The producer is idempotent: its own retries never duplicate.
MAX_BLOCK_MS = 2000  # waiting for room in the producer's queue (Kafka unreachable)
REQUEST_TIMEOUT_MS = 4000
DELIVERY_TIMEOUT_MS = 5000  # from send() to the ack, retries and waiting for metadata included; then it fails for good
PRODUCE_TIMEOUT_SEC = (MAX_BLOCK_MS + DELIVERY_TIMEOUT_MS) / 1000 + 1.0
LINGER_MS = 5  # replies of deliveries running at once share a request; each delivery waits for its ack
EAGER_BELOW = 4  # synchronous writes in flight below which a write does not wait for company
REPORTS_POLL_SEC = 0.1  # the report thread's wait; a report wakes it at once


class ProduceFuture:
    """One record's delivery report: `get()` is its offset once the broker has it, or raises why not."""

    def __init__(self) -> None:
        # A bare lock, held until the report comes: cheaper to hand over than an Event (a Condition and a list)
        self._pending = threading.Lock()
        self._pending.acquire()
        self._offset: int | None = None
        self._error: Exception | None = None

    def __call__(self, err, msg) -> None:  # librdkafka's delivery callback (the report thread)
        if err is not None:
            from confluent_kafka import KafkaException

            self._error = KafkaException(err)
        else:
            self._offset = msg.offset()
        self._pending.release()

    def get(self, timeout: float = PRODUCE_TIMEOUT_SEC) -> int:
        if not self._pending.acquire(timeout=timeout):
            raise TimeoutError(f"no delivery report from Kafka within {timeout:.0f}s")
        self._pending.release()  # reported: get() answers again at once
        if self._error is not None:
            raise self._error
        return self._offset


class _Writer:
    """One librdkafka producer, the thread that serves its delivery reports, and how many of its
    records await their report."""

    def __init__(self, bootstrap_servers: str, client_id: str, linger_ms: float):
        from confluent_kafka import Producer  # imported here: functions never need a Kafka client

        self.producer = Producer({
            "bootstrap.servers": bootstrap_servers, "client.id": client_id, "acks": "all",
            "enable.idempotence": True, "request.timeout.ms": REQUEST_TIMEOUT_MS,
            "message.timeout.ms": DELIVERY_TIMEOUT_MS, "message.max.bytes": 4 * MAX_EVENT_BYTES,
            "linger.ms": linger_ms, "partitioner": "murmur2_random", "socket.nagle.disable": True,
            "logger": logging.getLogger("kafka.rdkafka"),  # through flts.logs (JSON lines, WARNING up), not bare stderr
        })
        self.in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reports = threading.Thread(target=self._serve_reports, name=f"{client_id}-reports", daemon=True)
        self._reports.start()

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: list, future: ProduceFuture) -> None:
        """Queue one record; with the queue full (Kafka unreachable), wait up to MAX_BLOCK_MS for room."""
        def report(err, msg) -> None:
            self._count(-1)
            future(err, msg)

        self._count(1)
        waited = 0.0
        while True:
            try:
                return self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
            except BufferError:
                if waited >= MAX_BLOCK_MS / 1000:
                    self._count(-1)
                    raise TimeoutError(f"the producer's queue stayed full for {MAX_BLOCK_MS} ms") from None
                self._closing.wait(0.05)
                waited += 0.05

    def flush(self, timeout: float) -> int:
        return self.producer.flush(timeout)

    def close(self) -> None:
        self.producer.flush(5)
        self._closing.set()
        self._reports.join(5)

    def _count(self, n: int) -> None:
        with self._lock:
            self.in_flight += n

    def _serve_reports(self) -> None:
        """Run the delivery callbacks (librdkafka calls them from poll) until closed."""
        while not self._closing.is_set():
            self.producer.poll(REPORTS_POLL_SEC)


class EventProducer:
    """Writes CloudEvents to Kafka and waits for the broker's ack (thread-safe)."""

    def __init__(self, bootstrap_servers: str, client_id: str = "flts-dispatcher"):
        self._batching = _Writer(bootstrap_servers, client_id, LINGER_MS)
        self._eager = _Writer(bootstrap_servers, f"{client_id}-eager", 0)

    def send_event(self, topic: str, event, wait: bool = True, headers: list[tuple[str, bytes]] = ()):
        """The offset once the broker has it; with wait=False a ProduceFuture (call flush() later).
        `headers` are added to the CloudEvent's own (e.g. the replay's target deployment)."""
        message = event_to_kafka(event)
        key = message.key.encode() if isinstance(message.key, str) else message.key
        return self.send_raw(topic, message.value, key, [*message.headers.items(), *headers], wait)

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None, headers=None, wait: bool = True):
        future = ProduceFuture()
        self._writer_for(wait).produce(topic, value, key, list(headers or []), future)
        return future.get() if wait else future

    def flush(self) -> None:
        left = sum(writer.flush(PRODUCE_TIMEOUT_SEC) for writer in (self._batching, self._eager))
        if left:
            raise TimeoutError(f"{left} record(s) not acknowledged by Kafka within {PRODUCE_TIMEOUT_SEC:.0f}s")

    def close(self) -> None:
        for writer in (self._batching, self._eager):
            writer.close()

    def _writer_for(self, wait: bool) -> _Writer:
        """The eager producer for a synchronous write while few are in flight and none waits in the batching one."""
        if wait and self._batching.in_flight == 0 and self._eager.in_flight < EAGER_BELOW:
            return self._eager
        return self._batching


def publish(bootstrap_servers: str, event, topics: Mapping[str, str] = routing.TOPICS) -> tuple[str, int]:
    """Write one event to the topic of its type; returns (topic, offset). For `flts upload` and tools."""
    topic = Routes(topics).topic_of(event["type"])
    producer = EventProducer(bootstrap_servers, client_id="flts-publish")
    try:
        return topic, producer.send_event(topic, event)
    finally:
        producer.close()
