"""One consumer loop per deployment replica: poll records, deliver several at once, settle each, commit the watermark.

Concurrency (DISPATCH_CONCURRENCY deliveries in flight per deployment): the loop thread owns
the Kafka consumer and hands each record to a `KeyedPool`, one lane per record key (the
dataset identifier): one dataset's events reach the function one after the other, in
order; other datasets' go at the same time. At most a few times DISPATCH_CONCURRENCY records
wait in memory; beyond that the partitions are paused (still polled, so the group keeps us).

At-least-once: auto-commit is off; a record is *settled* once it is delivered (a 2xx, its
reply events written to their topics first) or dead-lettered to `dlq-<topic>`, and the
committed offset is the `Watermark` of each partition: it never passes a record that has
not settled, whatever order they settle in. A crash re-delivers everything after it.
A message that is not a CloudEvent, or whose type the deployment does not take, is
dead-lettered too: a poison message never blocks a topic.

The loop outlives its errors: a record whose settling fails (Kafka unreachable while
writing a reply) is settled again after a backoff, its key's lane waiting; anything that
escapes a poll closes the Kafka consumer and opens a new one after a pause
(`dispatch_consumer_restart`); uncommitted records then come again from the last commit,
and the old consumer's late results are ignored. A replayed dead letter (header
`flts_replay_for`) is delivered to the deployment it names only; the others settle it
and move on.

Replicas: a deployment with several URLs has one loop per URL, all in the deployment's one
consumer group, so Kafka's group shares the partitions out among them; a key stays on its
partition, so one dataset's events still go to one replica, in order.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import orjson

from flts import routing
from flts.auth import event_token
from flts.dispatcher.codec import event_from_kafka
from flts.dispatcher.deadletters import REPLAY_FOR_HEADER
from flts.dispatcher.dedup import Written, root_of, write_once
from flts.dispatcher.delivery import DeliveryResult, dead_letter_envelope, deliver, reply_events, retry_delay
from flts.dispatcher.httpclient import PooledClient
from flts.dispatcher.lanes import KeyedPool
from flts.dispatcher.producer import EventProducer
from flts.dispatcher.routes import Routes, Subscription
from flts.dispatcher.settings import DispatchSettings
from flts.dispatcher.watermark import Watermark
from flts.events import EventError
from flts.logs import error, log, warn

RESTART_PAUSE_SEC = 2.0  # before a consumer that failed is opened again
SESSION_TIMEOUT_MS = 10_000
BUFFER_PER_WORKER, MIN_BUFFER = 4, 64  # records held in memory (per delivery slot) before fetching pauses
POLL_IDLE_MS, POLL_BUSY_MS = 500, 50  # busy: come back soon to commit what settled
# A poll waits for room for this share of the buffer: polling as each record settles would fetch
# (and commit) one record at a time, a Kafka request per event.
REFILL_SHARE = 0.5
COMMIT_INTERVAL_SEC = 0.1  # commits coalesced: each is a write to __consumer_offsets, costly per event
STOP_DRAIN_SEC = 10.0  # on stop, how long deliveries in flight may finish (then their records come again)


class _Stopping(Exception):
    """The dispatcher stops mid-delivery: leave the record uncommitted."""


@dataclass
class LoopStats:
    delivered: int = 0
    dead_lettered: int = 0
    retried_records: int = 0
    replies: int = 0
    restarts: int = 0  # the Kafka consumer failed and was opened again
    pending: int = 0  # records taken and not settled yet (in flight or waiting for their key's lane)
    assigned: list[str] = field(default_factory=list)
    joined: bool = False  # the group gave this consumer its share (none, when there are more replicas than partitions)
    last_error: str | None = None
    _lock: ClassVar = threading.Lock()  # workers count at the same time

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class Session:
    """One Kafka consumer's bookkeeping, shared by its loop thread and the workers: a watermark per partition.

    When the consumer is closed (restart) or a partition revoked, that partition's records are
    its next owner's (from the last commit): work still running for them is ignored when it ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict = {}  # TopicPartition -> Watermark
        self._moved: dict = {}  # TopicPartition -> offset to commit, not committed yet
        self._unpinned: set = set()  # assigned, start not yet checked (Consumer._pin_starts)
        self.closed = False

    def assigned(self, tps) -> None:
        with self._lock:
            self._unpinned.update(tps)

    def take_unpinned(self) -> set:
        with self._lock:
            unpinned, self._unpinned = self._unpinned, set()
            return unpinned

    def fetched(self, tp, offset: int) -> Watermark | None:
        """Track a fetched record; None if it is tracked already (fetched twice: skipped)."""
        with self._lock:
            mark = self._marks.setdefault(tp, Watermark())
            try:
                mark.fetched(offset)
            except ValueError:
                return None
            return mark

    def owns(self, tp, mark: Watermark) -> bool:
        with self._lock:
            return not self.closed and self._marks.get(tp) is mark

    def settle(self, tp, mark: Watermark, offset: int) -> None:
        with self._lock:
            if self.closed or self._marks.get(tp) is not mark:
                return  # revoked or restarted meanwhile: not ours to commit
            moved = mark.settle(offset)
            if moved is not None:
                self._moved[tp] = moved

    def take_moved(self) -> dict:
        """Offsets whose watermark moved since the last call: what to commit now."""
        with self._lock:
            moved, self._moved = self._moved, {}
            return moved

    def committable(self, tps=None) -> dict:
        with self._lock:
            return {tp: m.committable for tp, m in self._marks.items()
                    if m.committable is not None and (tps is None or tp in tps)}

    def drop(self, tps) -> None:
        with self._lock:
            for tp in tps:
                self._marks.pop(tp, None)
                self._moved.pop(tp, None)

    def close(self) -> None:
        with self._lock:
            self.closed = True


class ConsumerLoop(threading.Thread):
    """One deployment: poll records, deliver up to DISPATCH_CONCURRENCY at once (per key in order), commit."""

    def __init__(self, subscription: Subscription, routes: Routes, settings: DispatchSettings,
                 producer: EventProducer, stop: threading.Event, written: Written | None = None):
        super().__init__(name=f"dispatch-{subscription.name}", daemon=True)
        self.sub, self.routes, self.settings = subscription, routes, settings
        self.producer, self.stop = producer, stop
        self.written = written or Written()
        self.group = f"{settings.group_prefix}{subscription.deployment}"
        self.stats = LoopStats()
        self.concurrency = settings.concurrency_for(subscription.deployment)
        self.buffer_limit = max(MIN_BUFFER, self.concurrency * BUFFER_PER_WORKER)
        self.pool: KeyedPool | None = None
        self.client: PooledClient | None = None
        self._roots: dict[bytes | None, str] = {}  # record key -> chain root of its delivery in flight
        self._roots_lock = threading.Lock()
        self.token = event_token()  # read once: from the environment it costs more than a delivery
        self._next_commit = 0.0  # monotonic time the next commit may go out

    def run(self) -> None:
        self.client = self._http_client()
        self.pool = KeyedPool(self.concurrency, f"deliver-{self.sub.name}")
        try:
            while not self.stop.is_set():
                try:
                    self._consume()
                except Exception as exc:  # noqa: BLE001 - whatever it was, a fresh consumer goes on
                    self.stats.add("restarts")
                    self.stats.last_error = f"consumer: {type(exc).__name__}: {exc}"
                    error("dispatch_consumer_restart", deployment=self.sub.deployment, error=self.stats.last_error,
                          restarts=self.stats.restarts, pause=RESTART_PAUSE_SEC)
                    self.stop.wait(RESTART_PAUSE_SEC)
        finally:
            self.pool.close()
            self.client.close()
            log("dispatch_consumer_stopped", deployment=self.sub.deployment)

    def roots_in_flight(self) -> dict[bytes | None, str]:
        """Record key -> chain root, for each delivery in flight now (the ingress attributes outputs by it)."""
        with self._roots_lock:
            return dict(self._roots)

    # ----------------------------------------------------------------- the loop thread: Kafka only
    def _consume(self) -> None:
        """One Kafka consumer's life: poll and hand out records until the dispatcher stops or something raises."""
        session = Session()
        consumer = self._open_consumer(session)
        log("dispatch_consumer_started", deployment=self.sub.deployment, replica=self.sub.name, group=self.group,
            topics=list(self.sub.topics), url=self.sub.url, concurrency=self.concurrency)
        try:
            while not self.stop.is_set():
                self._poll_once(consumer, session)
            self.pool.wait_idle(STOP_DRAIN_SEC)  # let what is in flight settle (queued records are skipped)
        finally:
            self.stats.assigned, self.stats.joined = [], False
            self._final_commit(consumer, session)
            session.close()
            with contextlib.suppress(Exception):  # a broken consumer may fail to close: it is dropped anyway
                consumer.close(autocommit=False)

    def _open_consumer(self, session: Session):
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.group,
            client_id=f"flts-dispatcher-{self.sub.name}",
            enable_auto_commit=False,  # commit by hand, at the watermark of settled records
            auto_offset_reset=self.settings.offset_reset,
            max_poll_records=self.buffer_limit,
            max_poll_interval_ms=self.settings.max_poll_interval_ms(),
            # a killed dispatcher's partitions wait this long for their new consumer (45 s by default);
            # heartbeats come from a background thread every 3 s, so a long delivery is not mistaken for it
            session_timeout_ms=SESSION_TIMEOUT_MS,
        )
        self.stats.joined = False
        consumer.subscribe(list(self.sub.topics), listener=_rebalance_listener(self, consumer, session))
        return consumer

    def _http_client(self) -> PooledClient:
        return PooledClient(self.settings.timeout, self.settings.connect_timeout)

    def _poll_once(self, consumer, session: Session) -> None:
        self._commit_due(consumer, session)
        room = self._room(consumer)
        try:
            batch = consumer.poll(timeout_ms=0 if not room else POLL_BUSY_MS if self.pool.pending else POLL_IDLE_MS,
                                  max_records=room or 1)  # paused when there is no room: nothing comes
        except Exception as exc:  # noqa: BLE001 - the client reconnects by itself; keep the loop
            self.stats.last_error = f"poll: {type(exc).__name__}: {exc}"
            error("dispatch_poll_failed", deployment=self.sub.deployment, error=self.stats.last_error)
            self.stop.wait(1.0)
            return
        self._pin_starts(consumer, session, batch)
        self.stats.assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
        for tp, records in batch.items():
            for record in records:
                self.take(session, tp, record)
        self.stats.pending = self.pool.pending

    def take(self, session: Session, tp, record) -> None:
        """Queue one fetched record on its key's lane."""
        mark = session.fetched(tp, record.offset)
        if mark is None:
            return
        self.pool.submit(record.key, lambda: self._settle_in(session, tp, mark, record))

    def _room(self, consumer) -> int:
        """How many records to fetch now: with the buffer filled past the refill mark, wait a little for it to
        drain; still full, pause fetching and return 0 (polling goes on, so the group keeps this member and
        commits go out)."""
        refill_mark = self.buffer_limit - max(1, int(self.buffer_limit * REFILL_SHARE))
        if not self.pool.wait_below(refill_mark + 1, POLL_BUSY_MS / 1000):
            consumer.pause(*consumer.assignment())
            return 0
        if consumer.paused():
            consumer.resume(*consumer.paused())
        return self.buffer_limit - self.pool.pending

    def _commit_due(self, consumer, session: Session) -> None:
        """Commit the watermarks that moved, at most once per COMMIT_INTERVAL_SEC."""
        if time.monotonic() >= self._next_commit:
            self._commit(consumer, session.take_moved())
            self._next_commit = time.monotonic() + COMMIT_INTERVAL_SEC

    def _commit(self, consumer, offsets: dict) -> None:
        # Asynchronous: polling need not wait for the broker. A commit that is lost (crash,
        # rebalance) only means settled records come again: at-least-once still holds.
        if offsets:
            from kafka import OffsetAndMetadata

            consumer.commit_async({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
                                  callback=self._commit_done)

    def _commit_done(self, offsets, result) -> None:
        if isinstance(result, Exception):
            self.stats.last_error = f"commit: {type(result).__name__}: {result}"
            warn("dispatch_commit_failed", deployment=self.sub.deployment, error=self.stats.last_error)

    def _final_commit(self, consumer, session: Session, tps=None) -> None:
        """Before a stop, commit the watermark (fewer redeliveries); on the loop thread, so it may block."""
        from kafka import OffsetAndMetadata

        try:
            owned = consumer.assignment() if tps is None else tps
            offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in session.committable(owned).items()}
            if offsets:
                consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - they will be redelivered: allowed
            warn("dispatch_commit_failed", deployment=self.sub.deployment, error=f"{type(exc).__name__}: {exc}")

    def _pin_starts(self, consumer, session: Session, batch: dict) -> None:
        """Commit where a newly assigned partition that the group never committed starts
        (DISPATCH_OFFSET_RESET), at once: else a dispatcher killed before its first commit there
        resets again on restart, and `latest` skips what was written meanwhile (e.g. a trainer's
        event, fetched but not yet settled). On the loop thread: kafka-python's rebalance
        callbacks run on its IO thread, where a blocking call fails."""
        assigned = session.take_unpinned()
        if not assigned:
            return
        from kafka import OffsetAndMetadata

        try:
            fresh = [tp for tp in assigned if consumer.committed(tp) is None]
            # the first record this poll fetched there, else where the next fetch starts
            starts = {tp: batch[tp][0].offset if batch.get(tp) else consumer.position(tp) for tp in fresh}
            if starts:
                consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in starts.items()})
        except Exception as exc:  # noqa: BLE001 - then try again after the next poll
            session.assigned(assigned)
            warn("dispatch_commit_failed", deployment=self.sub.deployment, error=f"{type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------- the workers: one record each
    def _settle_in(self, session: Session, tp, mark: Watermark, record) -> None:
        """Settle one record, again after a backoff if that fails, then let the watermark pass it."""
        failures = 0
        while not self.stop.is_set() and session.owns(tp, mark):
            try:
                self.settle(self.client, record)
            except _Stopping:
                return
            except Exception as exc:  # noqa: BLE001 - e.g. Kafka unreachable while writing a reply
                failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                error("dispatch_record_failed", deployment=self.sub.deployment, topic=record.topic,
                      offset=record.offset, error=self.stats.last_error, failures=failures)
                self.stop.wait(retry_delay(failures, None, self.settings))
                continue
            session.settle(tp, mark, record.offset)
            return

    def settle(self, client: PooledClient, record) -> None:
        """Deliver one record and write its replies or its dead letter; raises to leave it unsettled."""
        event = self._taken_event(record)
        if event is None:
            return
        started = time.perf_counter()
        with self._roots_lock:
            self._roots[record.key] = root_of(record.headers, event["id"])
        try:
            result = deliver(client, self.sub.url, event, self.settings, self.stop, self.token)
        finally:
            with self._roots_lock:  # from now on, a late post of this delivery is refused
                self._roots.pop(record.key, None)
        if result.interrupted:
            raise _Stopping()
        if result.attempts > 1:
            self.stats.add("retried_records")
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
        self.stats.add("delivered")
        self.stats.add("replies", len(replies))
        log("dispatch_delivered", deployment=self.sub.deployment, replica=self.sub.name, event_type=event["type"],
            event_id=event["id"], key=record.key.decode("utf-8", "replace") if record.key else None,
            status=result.status, attempts=result.attempts, replies=[r["type"] for r in replies],
            ms=round((time.perf_counter() - started) * 1000, 1))

    def dead_letter(self, record, event, reason: str, attempts: int, status: int | None = None) -> None:
        envelope = dead_letter_envelope(record, event, reason, attempts, self.sub.deployment, status)
        dlq = routing.dlq_topic(record.topic)
        self.producer.send_raw(dlq, orjson.dumps(envelope), record.key, [("content-type", b"application/json")])
        self.stats.add("dead_lettered")
        error("dead_letter", deployment=self.sub.deployment, topic=record.topic, dlq=dlq, offset=record.offset,
              event_id=event["id"] if event is not None else None, attempts=attempts, status=status, error=reason)


def _rebalance_listener(loop: ConsumerLoop, consumer, session: Session):
    """On revocation, commit the revoked partitions' watermark and forget them (their next owner goes on);
    on assignment (an empty one too: more replicas than partitions), the consumer has joined."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            # asynchronous: this runs on kafka-python's IO thread, where a blocking commit fails
            loop._commit(consumer, session.committable(set(revoked)))
            session.drop(revoked)

        def on_partitions_assigned(self, assigned):
            session.assigned(assigned)  # their start is pinned from the loop thread (_pin_starts)
            loop.stats.assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)
            loop.stats.joined = True

    return Listener()
