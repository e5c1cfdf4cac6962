"""One consumer loop per deployment: poll one record, deliver it, settle it, commit; repeat.

At-least-once: auto-commit is off and a record's offset is committed only once it is settled,
i.e. a 2xx (its reply events written to their topics first) or a dead letter written to
`dlq-<topic>`. A message that is not a CloudEvent, or whose type the deployment does not
take, is dead-lettered too: a poison message never blocks a topic.

The loop outlives its errors: anything that escapes a poll or a settle closes the Kafka
consumer and opens a new one after a pause (`dispatch_consumer_restart`); uncommitted records
then come again from the last commit. A replayed dead letter (header `flts_replay_for`) is
delivered to the deployment it names only; the others commit it and move on.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import httpx
import orjson

from flts import routing
from flts.dispatcher.codec import event_from_kafka
from flts.dispatcher.deadletters import REPLAY_FOR_HEADER
from flts.dispatcher.dedup import Written, root_of, write_once
from flts.dispatcher.delivery import DeliveryResult, dead_letter_envelope, deliver, reply_events
from flts.dispatcher.producer import EventProducer
from flts.dispatcher.routes import Routes, Subscription
from flts.dispatcher.settings import DispatchSettings
from flts.events import EventError
from flts.logs import error, log, warn

RESTART_PAUSE_SEC = 2.0  # before a consumer that failed is opened again
SESSION_TIMEOUT_MS = 10_000


class _Stopping(Exception):
    """The dispatcher stops mid-delivery: leave the record uncommitted."""


@dataclass
class LoopStats:
    delivered: int = 0
    dead_lettered: int = 0
    retried_records: int = 0
    replies: int = 0
    restarts: int = 0  # the Kafka consumer failed and was opened again
    assigned: list[str] = field(default_factory=list)
    last_error: str | None = None


class ConsumerLoop(threading.Thread):
    """One deployment: poll one record, deliver it, settle it, commit; repeat."""

    def __init__(self, subscription: Subscription, routes: Routes, settings: DispatchSettings,
                 producer: EventProducer, stop: threading.Event, written: Written | None = None):
        super().__init__(name=f"dispatch-{subscription.deployment}", daemon=True)
        self.sub, self.routes, self.settings = subscription, routes, settings
        self.producer, self.stop = producer, stop
        self.written = written or Written()
        self.inflight_root: str | None = None  # the chain root of the record being delivered (dedup, ingress)
        self.group = f"{settings.group_prefix}{subscription.deployment}"
        self.stats = LoopStats()
        self.settled: dict = {}  # TopicPartition -> OffsetAndMetadata of the last settled record

    def run(self) -> None:
        client = self._http_client()
        try:
            while not self.stop.is_set():
                try:
                    self._consume(client)
                except _Stopping:
                    break
                except Exception as exc:  # noqa: BLE001 - whatever it was, a fresh consumer goes on
                    self.stats.restarts += 1
                    self.stats.last_error = f"consumer: {type(exc).__name__}: {exc}"
                    error("dispatch_consumer_restart", deployment=self.sub.deployment, error=self.stats.last_error,
                          restarts=self.stats.restarts, pause=RESTART_PAUSE_SEC)
                    self.stop.wait(RESTART_PAUSE_SEC)
        finally:
            client.close()
            log("dispatch_consumer_stopped", deployment=self.sub.deployment)

    def _consume(self, client: httpx.Client) -> None:
        """One Kafka consumer's life: poll and settle until the dispatcher stops or something raises."""
        consumer = self._open_consumer()
        log("dispatch_consumer_started", deployment=self.sub.deployment, group=self.group,
            topics=list(self.sub.topics), url=self.sub.url)
        try:
            while not self.stop.is_set():
                self._poll_once(consumer, client)
        finally:
            self.stats.assigned = []
            self._final_commit(consumer)
            with contextlib.suppress(Exception):  # a broken consumer may fail to close: it is dropped anyway
                consumer.close(autocommit=False)

    def _open_consumer(self):
        from kafka import KafkaConsumer

        return KafkaConsumer(
            *self.sub.topics,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.group,
            client_id=f"flts-dispatcher-{self.sub.deployment}",
            enable_auto_commit=False,  # commit by hand, after the event is settled
            auto_offset_reset=self.settings.offset_reset,
            max_poll_records=1,  # one record in flight: a failure rewinds exactly one offset
            max_poll_interval_ms=self.settings.max_poll_interval_ms(),
            # a killed dispatcher's partitions wait this long for their new consumer (45 s by default);
            # heartbeats come from a background thread every 3 s, so a long delivery is not mistaken for it
            session_timeout_ms=SESSION_TIMEOUT_MS,
        )

    def _http_client(self) -> httpx.Client:
        timeout = httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout)
        # keep-alive shorter than the servers' own (gunicorn closes idle connections after 2 s):
        # a retry after a long wait must not pick a connection the function is closing
        limits = httpx.Limits(keepalive_expiry=1.0)
        return httpx.Client(timeout=timeout, limits=limits, trust_env=False)  # no proxy for 127.0.0.1

    def _poll_once(self, consumer, client: httpx.Client) -> None:
        try:
            batch = consumer.poll(timeout_ms=500, max_records=1)
        except Exception as exc:  # noqa: BLE001 - the client reconnects by itself; keep the loop
            self.stats.last_error = f"poll: {type(exc).__name__}: {exc}"
            error("dispatch_poll_failed", deployment=self.sub.deployment, error=self.stats.last_error)
            self.stop.wait(1.0)
            return
        self.stats.assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
        for tp, records in batch.items():
            for record in records:
                self.process(consumer, client, tp, record)

    def process(self, consumer, client: httpx.Client, tp, record) -> None:
        """Settle one record, then commit it; on any failure rewind so it comes again."""
        from kafka import OffsetAndMetadata

        try:
            self.settle(client, record)
        except _Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. Kafka unreachable while writing a reply
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            error("dispatch_record_failed", deployment=self.sub.deployment, topic=record.topic,
                  offset=record.offset, error=self.stats.last_error)
            self._rewind(consumer, tp, record.offset)
            self.stop.wait(self.settings.backoff_base)
            return
        # Asynchronous: the next record need not wait for the broker. A commit that is lost
        # (crash, rebalance) only means settled records come again: at-least-once still holds.
        self.settled[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        consumer.commit_async({tp: self.settled[tp]}, callback=self._commit_done)

    def _rewind(self, consumer, tp, offset: int) -> None:
        """Poll this record again. If the partition was revoked meanwhile, seek fails: its new owner
        starts from the last commit, which is before this record, so nothing is lost."""
        try:
            consumer.seek(tp, offset)
        except Exception as exc:  # noqa: BLE001 - kafka-python raises IllegalStateError / AssertionError
            warn("dispatch_seek_failed", deployment=self.sub.deployment, topic=tp.topic, partition=tp.partition,
                 offset=offset, error=f"{type(exc).__name__}: {exc}")

    def _commit_done(self, offsets, result) -> None:
        if isinstance(result, Exception):
            self.stats.last_error = f"commit: {type(result).__name__}: {result}"
            warn("dispatch_commit_failed", deployment=self.sub.deployment, error=self.stats.last_error)

    def _final_commit(self, consumer) -> None:
        """On a clean stop, make sure what was settled is committed (fewer redeliveries)."""
        try:
            owned = {tp: offset for tp, offset in self.settled.items() if tp in consumer.assignment()}
            if owned:
                consumer.commit(owned, timeout_ms=5000)
        except Exception as exc:  # noqa: BLE001 - they will be redelivered: allowed
            warn("dispatch_commit_failed", deployment=self.sub.deployment, error=f"{type(exc).__name__}: {exc}")

    def settle(self, client: httpx.Client, record) -> None:
        """Deliver one record and write its replies or its dead letter; raises to leave it uncommitted."""
        event = self._taken_event(record)
        if event is None:
            return
        started = time.perf_counter()
        self.inflight_root = root_of(record.headers, event["id"])
        try:
            result = deliver(client, self.sub.url, event, self.settings, self.stop)
        finally:
            self.inflight_root = None  # from now on, a late post of this delivery is refused
        if result.interrupted:
            raise _Stopping()
        if result.attempts > 1:
            self.stats.retried_records += 1
        if not result.ok:
            self.dead_letter(record, event, result.error or "delivery failed", result.attempts, result.status)
            return
        self._write_replies(record, event, result, started)

    def _taken_event(self, record):
        """The record's event if this deployment takes it; otherwise it is dead-lettered (or, a
        replay for another deployment, passed by) and None."""
        replay_for = dict(record.headers or []).get(REPLAY_FOR_HEADER)
        if replay_for is not None and replay_for.decode("utf-8", "replace") != self.sub.deployment:
            return None
        try:
            event = event_from_kafka(record.headers, record.value)
        except EventError as exc:
            self.dead_letter(record, None, str(exc), attempts=0)
            return None
        if event["type"] not in self.sub.event_types:
            self.dead_letter(record, event, f"event type {event['type']!r} is not taken by {self.sub.deployment} "
                                            f"(subscribed: {list(self.sub.event_types)})", attempts=0)
            return None
        return event

    def _write_replies(self, record, event, result: DeliveryResult, started: float) -> None:
        try:
            replies = reply_events(result.response)
            topics = [self.routes.topic_of(r["type"]) for r in replies]
        except EventError as exc:  # the function worked but its answer cannot be routed
            self.dead_letter(record, event, f"bad reply: {exc}", result.attempts, result.status)
            return
        root = root_of(record.headers, event["id"])
        for reply, topic in zip(replies, topics, strict=True):
            write_once(self.producer, self.written, topic, reply, root)
        self.stats.delivered += 1
        self.stats.replies += len(replies)
        log("dispatch_delivered", deployment=self.sub.deployment, event_type=event["type"], event_id=event["id"],
            status=result.status, attempts=result.attempts, replies=[r["type"] for r in replies],
            ms=round((time.perf_counter() - started) * 1000, 1))

    def dead_letter(self, record, event, reason: str, attempts: int, status: int | None = None) -> None:
        envelope = dead_letter_envelope(record, event, reason, attempts, self.sub.deployment, status)
        dlq = routing.dlq_topic(record.topic)
        self.producer.send_raw(dlq, orjson.dumps(envelope), record.key, [("content-type", b"application/json")])
        self.stats.dead_lettered += 1
        error("dead_letter", deployment=self.sub.deployment, topic=record.topic, dlq=dlq, offset=record.offset,
              event_id=event["id"] if event is not None else None, attempts=attempts, status=status, error=reason)

