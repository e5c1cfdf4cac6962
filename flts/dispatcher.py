"""The event dispatcher: Kafka → HTTP CloudEvents, and an ingress that writes events back.

It plays, on one machine (and on OpenFaaS CE, which has no Kafka connector), the part that
Knative's KafkaSource + Broker play on a cluster:

- For every deployment in the routing table that has a URL, one consumer loop (a thread
  with its own consumer group `flts-<deployment>`) reads the topics of the event types the
  deployment subscribes to, POSTs each event as a binary-mode CloudEvent, and commits the
  offset only after the event is settled (at-least-once; auto-commit is off).
- Settled means: a 2xx (its reply events written to their topics first), or a dead letter
  written to `dlq-<topic>`. 5xx/408/409/429 and connection errors are retried with
  exponential backoff honouring Retry-After, up to DISPATCH_MAX_RETRIES; any other 4xx
  goes to the dead-letter topic at once. A message that is not a CloudEvent, or whose type
  the deployment does not take, is dead-lettered too: a poison message never blocks a topic.
- Replies: a binary (or structured) CloudEvent, or an `application/cloudevents-batch+json`
  list, answered with a 2xx is written to the topic of its type.
- Ingress (HTTP, what functions use as K_SINK): POST a CloudEvent (binary, structured or
  batch) and it is written to the topic of its type before the 202 goes back.

Kafka message format. We write CloudEvents in the Kafka protocol binding's *binary content
mode* (what Knative's KafkaSink writes): `ce_<attribute>` headers, `content-type:
application/json`, the value is the event data as JSON, the key is the event's subject (the
dataset identifier), so one dataset's events stay ordered on one partition. We read binary
and *structured* mode (`content-type: application/cloudevents+json`, the value is the whole
event as JSON, e.g. a dead letter's `event` replayed by hand).

Dead letters (value, JSON): `{"event": <structured CloudEvent> | null, "error", "attempts",
"function", "timestamp", "status", "topic", "partition", "offset"}`, plus `"raw"` (the value as
text) and `"headers"` when the message could not be read as a CloudEvent.

Settings (environment): KAFKA_BOOTSTRAP_SERVERS, DISPATCH_TARGETS (`deployment=url,...`),
DISPATCH_MAX_RETRIES (5), DISPATCH_BACKOFF_BASE_SEC (0.5), DISPATCH_BACKOFF_MAX_SEC (30),
DISPATCH_RETRY_AFTER_MAX_SEC (60), DISPATCH_TIMEOUT_SEC (900), DISPATCH_CONNECT_TIMEOUT_SEC (5),
DISPATCH_GROUP_PREFIX (flts-), DISPATCH_OFFSET_RESET (earliest), DISPATCH_INGRESS_HOST
(127.0.0.1), DISPATCH_INGRESS_PORT (18090; 0 = any free port).

Run: `python -m flts.dispatcher` (or eventing/dispatcher/main.py).
"""
from __future__ import annotations

import email.utils
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
from cloudevents import exceptions as ce_errors
from cloudevents import kafka as ce_kafka
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_dict, from_http

from flts import events, routing
from flts.events import MAX_EVENT_BYTES, EventError
from flts.logs import error, log, set_component, warn
from flts.settings import ConfigError, Env, env_float, env_int, env_str

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
PRODUCE_TIMEOUT_SEC = 30.0


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class DispatchSettings:
    bootstrap_servers: str
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    timeout: float = 900.0  # a training run answers when it is done
    connect_timeout: float = 5.0
    group_prefix: str = "flts-"
    offset_reset: str = "earliest"
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 18090

    @classmethod
    def from_env(cls, env: Env) -> DispatchSettings:
        bootstrap = env_str(env, "KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set (host:port of the Kafka broker)")
        offset_reset = env_str(env, "DISPATCH_OFFSET_RESET", "earliest")
        if offset_reset not in ("earliest", "latest"):
            raise ConfigError(f"DISPATCH_OFFSET_RESET must be earliest or latest, got {offset_reset!r}")
        return cls(
            bootstrap_servers=bootstrap,
            max_retries=env_int(env, "DISPATCH_MAX_RETRIES", 5, minimum=0),
            backoff_base=env_float(env, "DISPATCH_BACKOFF_BASE_SEC", 0.5),
            backoff_max=env_float(env, "DISPATCH_BACKOFF_MAX_SEC", 30.0),
            retry_after_max=env_float(env, "DISPATCH_RETRY_AFTER_MAX_SEC", 60.0),
            timeout=env_float(env, "DISPATCH_TIMEOUT_SEC", 900.0),
            connect_timeout=env_float(env, "DISPATCH_CONNECT_TIMEOUT_SEC", 5.0),
            group_prefix=env_str(env, "DISPATCH_GROUP_PREFIX", "flts-"),
            offset_reset=offset_reset,
            ingress_host=env_str(env, "DISPATCH_INGRESS_HOST", "127.0.0.1"),
            ingress_port=env_int(env, "DISPATCH_INGRESS_PORT", 18090, minimum=0),
        )

    def max_poll_interval_ms(self) -> int:
        """Longest time one record may take (every attempt timing out, every wait at its cap).

        The consumer must not be thrown out of its group while a slow function (a training
        run) is still answering, or the record would be handed to another member mid-flight.
        """
        worst = (self.max_retries + 1) * (self.timeout + self.connect_timeout)
        worst += self.max_retries * max(self.backoff_max, self.retry_after_max)
        return int((worst + 60) * 1000)


# --------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class Subscription:
    """One deployment, where it listens, and which topics feed it."""

    deployment: str
    url: str
    event_types: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Routes:
    topics: Mapping[str, str]  # event type -> topic
    subscriptions: tuple[Subscription, ...]

    def topic_of(self, event_type: str) -> str:
        try:
            return self.topics[event_type]
        except KeyError:
            raise EventError(f"no topic for event type {event_type!r} (known: {sorted(self.topics)})") from None


def parse_targets(raw: str) -> dict[str, str]:
    """`preprocess=http://127.0.0.1:18100,eval=http://...` → {deployment: url}."""
    targets = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ConfigError(f"DISPATCH_TARGETS entry {item!r} must look like deployment=http://host:port")
        targets[name.strip()] = url.strip()
    return targets


def routes_from_table(
    targets: Mapping[str, str],
    deployments: tuple[routing.Deployment, ...] = routing.DEPLOYMENTS,
    topics: Mapping[str, str] = routing.TOPICS,
) -> Routes:
    """The shared routing table, restricted to the deployments that have a URL."""
    known = {d.name for d in deployments}
    unknown = sorted(set(targets) - known)
    if unknown:
        raise ConfigError(f"DISPATCH_TARGETS names unknown deployments {unknown} (known: {sorted(known)})")
    subscriptions = []
    for d in deployments:
        if d.name not in targets:
            continue
        missing = [t for t in d.subscribes if t not in topics]
        if missing:
            raise ConfigError(f"deployment {d.name} subscribes to {missing}, which have no topic")
        subscriptions.append(Subscription(
            d.name, targets[d.name], tuple(d.subscribes), tuple(dict.fromkeys(topics[t] for t in d.subscribes))))
    return Routes(dict(topics), tuple(subscriptions))


# --------------------------------------------------------------------------- Kafka codec
def _check_attributes(attributes: Mapping[str, object]) -> None:
    missing = [a for a in REQUIRED_ATTRIBUTES if not attributes.get(a)]
    if missing:
        raise EventError(f"not a CloudEvent: missing attribute(s) {missing}")
    if attributes["specversion"] != "1.0":
        raise EventError(f"unsupported CloudEvents specversion {attributes['specversion']!r} (want 1.0)")


def _is_json(content_type: str) -> bool:
    base = content_type.split(";")[0].strip().lower()
    return base in ("", "application/json", "text/json") or base.endswith("+json")


def event_from_kafka(headers: list[tuple[str, bytes]] | None, value: bytes | None) -> CloudEvent:
    """A Kafka message (binary or structured content mode) as a CloudEvent; EventError if it is not one."""
    value = value or b""
    try:
        hdrs = {k.lower(): v.decode("utf-8") for k, v in headers or []}
    except (UnicodeDecodeError, AttributeError):
        raise EventError("not a CloudEvent: a Kafka header is not UTF-8 text") from None
    content_type = hdrs.get("content-type", "")
    try:
        if "ce_specversion" in hdrs or "ce_type" in hdrs:
            _check_attributes({k[3:]: v for k, v in hdrs.items() if k.startswith("ce_")})
            message = ce_kafka.KafkaMessage({k: v.encode() for k, v in hdrs.items()}, None, value)
            unmarshal = (lambda raw: orjson.loads(raw) if raw else None) if _is_json(content_type) else bytes
            return ce_kafka.from_binary(message, data_unmarshaller=unmarshal)
        try:
            structure = orjson.loads(value)
        except orjson.JSONDecodeError:
            structure = None
        if not isinstance(structure, dict) or "specversion" not in structure:
            raise EventError("not a CloudEvent: no ce_* headers (binary mode) and the value is not a "
                             "structured CloudEvent JSON object")
        _check_attributes(structure)
        ct = {"content-type": content_type.encode()} if content_type and not content_type.startswith(
            STRUCTURED_CONTENT_TYPE) else {}
        return ce_kafka.from_structured(ce_kafka.KafkaMessage(ct, None, value),
                                        envelope_unmarshaller=lambda _raw: structure)
    except ce_errors.GenericException as exc:
        raise EventError(f"not a valid CloudEvent: {exc}") from None


def event_to_kafka(event) -> ce_kafka.KafkaMessage:
    """Binary content mode; the key is the subject (or the `partitionkey` extension)."""
    message = ce_kafka.to_binary(
        event,
        data_marshaller=lambda data: data if isinstance(data, bytes) else orjson.dumps(data),
        key_mapper=lambda e: e.get("partitionkey") or e.get("subject"),
    )
    return message


def structured_dict(event) -> dict:
    return orjson.loads(to_structured(event)[1])


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
    topic = Routes(topics, ()).topic_of(event["type"])
    producer = EventProducer(bootstrap_servers, client_id="flts-publish")
    try:
        return topic, producer.send_event(topic, event)
    finally:
        producer.close()


# --------------------------------------------------------------------------- delivery
@dataclass
class Outcome:
    """What came of POSTing one event: a 2xx response, or the reason it is a dead letter."""

    attempts: int
    response: httpx.Response | None = None
    status: int | None = None
    error: str | None = None
    interrupted: bool = False  # the dispatcher is stopping: settle nothing

    @property
    def ok(self) -> bool:
        return self.response is not None


def retryable(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUS


def retry_after_seconds(header: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_delay(attempt: int, retry_after: float | None, settings: DispatchSettings) -> float:
    """Exponential backoff after the `attempt`-th failure; a longer Retry-After wins (capped)."""
    backoff = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
    if retry_after is None:
        return backoff
    return max(backoff, min(retry_after, settings.retry_after_max))


def deliver(client: httpx.Client, url: str, event, settings: DispatchSettings,
            stop: threading.Event | None = None) -> Outcome:
    """POST one event (binary mode) until a 2xx, a final 4xx, or the retries run out."""
    stop = stop or threading.Event()
    headers, body = to_binary(event)
    attempt = 0
    while True:
        attempt += 1
        retry_after = None
        try:
            response = client.post(url, headers=headers, content=body)
        except httpx.TransportError as exc:
            status, reason = None, f"connection error: {type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                return Outcome(attempt, response=response, status=response.status_code)
            status, reason = response.status_code, f"HTTP {response.status_code}: {response.text[:500]}"
            if not retryable(status):
                return Outcome(attempt, status=status, error=reason)
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if attempt > settings.max_retries:
            return Outcome(attempt, status=status, error=f"gave up after {attempt} attempts: {reason}")
        delay = retry_delay(attempt, retry_after, settings)
        warn("dispatch_retry", url=url, event_id=event["id"], attempt=attempt, delay=round(delay, 3), error=reason)
        if stop.wait(delay):
            return Outcome(attempt, status=status, error=reason, interrupted=True)


def reply_events(response: httpx.Response) -> list:
    """The events a function answered with: binary/structured CloudEvent, a batch, or none."""
    content_type = response.headers.get("content-type", "").lower()
    if content_type.startswith(BATCH_CONTENT_TYPE):
        try:
            items = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise EventError(f"reply batch is not JSON: {exc}") from None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise EventError("reply batch must be a JSON list of structured CloudEvents")
        for item in items:
            _check_attributes(item)
        try:
            return [from_dict(item) for item in items]
        except ce_errors.GenericException as exc:
            raise EventError(f"reply batch holds an invalid CloudEvent: {exc}") from None
    is_binary = "ce-specversion" in response.headers
    if not is_binary and not content_type.startswith(STRUCTURED_CONTENT_TYPE):
        return []  # 202/204, or a plain "OK" from a @cloud_event function: nothing to route
    try:
        event = from_http(dict(response.headers), response.content)
    except ce_errors.GenericException as exc:
        raise EventError(f"reply is not a valid CloudEvent: {exc}") from None
    return [event]


def dead_letter_envelope(record, event, reason: str, attempts: int, deployment: str,
                         status: int | None = None) -> dict:
    envelope = {
        "event": structured_dict(event) if event is not None else None,
        "error": reason,
        "attempts": attempts,
        "function": deployment,
        "timestamp": datetime.now(UTC).isoformat(),
        "status": status,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if event is None:  # keep what we could not read, as faithfully as JSON allows
        envelope["raw"] = (record.value or b"").decode("utf-8", "replace")
        envelope["headers"] = {k: v.decode("utf-8", "replace") for k, v in record.headers or []}
    return envelope


# --------------------------------------------------------------------------- consumer loop
class _Stopping(Exception):
    """The dispatcher stops mid-delivery: leave the record uncommitted."""


@dataclass
class LoopStats:
    delivered: int = 0
    dead_lettered: int = 0
    retried_records: int = 0
    replies: int = 0
    assigned: list[str] = field(default_factory=list)
    last_error: str | None = None


class ConsumerLoop(threading.Thread):
    """One deployment: poll one record, deliver it, settle it, commit; repeat."""

    def __init__(self, subscription: Subscription, routes: Routes, settings: DispatchSettings,
                 producer: EventProducer, stop: threading.Event):
        super().__init__(name=f"dispatch-{subscription.deployment}", daemon=True)
        self.sub, self.routes, self.settings = subscription, routes, settings
        self.producer, self.stop = producer, stop
        self.group = f"{settings.group_prefix}{subscription.deployment}"
        self.stats = LoopStats()
        self.settled: dict = {}  # TopicPartition -> OffsetAndMetadata of the last settled record

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            *self.sub.topics,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.group,
            client_id=f"flts-dispatcher-{self.sub.deployment}",
            enable_auto_commit=False,  # commit by hand, after the event is settled
            auto_offset_reset=self.settings.offset_reset,
            max_poll_records=1,  # one record in flight: a failure rewinds exactly one offset
            max_poll_interval_ms=self.settings.max_poll_interval_ms(),
        )
        timeout = httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout)
        # keep-alive shorter than the servers' own (gunicorn closes idle connections after 2 s):
        # a retry after a long wait must not pick a connection the function is closing
        limits = httpx.Limits(keepalive_expiry=1.0)
        client = httpx.Client(timeout=timeout, limits=limits, trust_env=False)  # no proxy for 127.0.0.1
        log("dispatch_consumer_started", deployment=self.sub.deployment, group=self.group,
            topics=list(self.sub.topics), url=self.sub.url)
        try:
            while not self.stop.is_set():
                try:
                    batch = consumer.poll(timeout_ms=500, max_records=1)
                except Exception as exc:  # noqa: BLE001 - the client reconnects by itself; keep the loop
                    self.stats.last_error = f"poll: {type(exc).__name__}: {exc}"
                    error("dispatch_poll_failed", deployment=self.sub.deployment, error=self.stats.last_error)
                    self.stop.wait(1.0)
                    continue
                self.stats.assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
                for tp, records in batch.items():
                    for record in records:
                        self.process(consumer, client, tp, record)
        except _Stopping:
            pass
        finally:
            self._final_commit(consumer)
            consumer.close(autocommit=False)
            client.close()
            log("dispatch_consumer_stopped", deployment=self.sub.deployment)

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
            consumer.seek(tp, record.offset)
            self.stop.wait(self.settings.backoff_base)
            return
        # Asynchronous: the next record need not wait for the broker. A commit that is lost
        # (crash, rebalance) only means settled records come again: at-least-once still holds.
        self.settled[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        consumer.commit_async({tp: self.settled[tp]}, callback=self._commit_done)

    def _commit_done(self, offsets, result) -> None:
        if isinstance(result, Exception):
            self.stats.last_error = f"commit: {type(result).__name__}: {result}"
            warn("dispatch_commit_failed", deployment=self.sub.deployment, error=self.stats.last_error)

    def _final_commit(self, consumer) -> None:
        """On a clean stop, make sure what was settled is committed (fewer redeliveries)."""
        owned = {tp: offset for tp, offset in self.settled.items() if tp in consumer.assignment()}
        if owned:
            try:
                consumer.commit(owned, timeout_ms=5000)
            except Exception as exc:  # noqa: BLE001 - they will be redelivered: allowed
                warn("dispatch_commit_failed", deployment=self.sub.deployment, error=f"{type(exc).__name__}: {exc}")

    def settle(self, client: httpx.Client, record) -> None:
        """Deliver one record and write its replies or its dead letter; raises to leave it uncommitted."""
        try:
            event = event_from_kafka(record.headers, record.value)
        except EventError as exc:
            self.dead_letter(record, None, str(exc), attempts=0)
            return
        if event["type"] not in self.sub.event_types:
            self.dead_letter(record, event, f"event type {event['type']!r} is not taken by {self.sub.deployment} "
                                            f"(subscribed: {list(self.sub.event_types)})", attempts=0)
            return
        started = time.perf_counter()
        outcome = deliver(client, self.sub.url, event, self.settings, self.stop)
        if outcome.interrupted:
            raise _Stopping()
        if outcome.attempts > 1:
            self.stats.retried_records += 1
        if not outcome.ok:
            self.dead_letter(record, event, outcome.error or "delivery failed", outcome.attempts, outcome.status)
            return
        try:
            replies = reply_events(outcome.response)
            topics = [self.routes.topic_of(r["type"]) for r in replies]
        except EventError as exc:  # the function worked but its answer cannot be routed
            self.dead_letter(record, event, f"bad reply: {exc}", outcome.attempts, outcome.status)
            return
        for reply, topic in zip(replies, topics, strict=True):
            self.producer.send_event(topic, reply)
        self.stats.delivered += 1
        self.stats.replies += len(replies)
        log("dispatch_delivered", deployment=self.sub.deployment, event_type=event["type"], event_id=event["id"],
            status=outcome.status, attempts=outcome.attempts, replies=[r["type"] for r in replies],
            ms=round((time.perf_counter() - started) * 1000, 1))

    def dead_letter(self, record, event, reason: str, attempts: int, status: int | None = None) -> None:
        envelope = dead_letter_envelope(record, event, reason, attempts, self.sub.deployment, status)
        dlq = routing.dlq_topic(record.topic)
        self.producer.send_raw(dlq, orjson.dumps(envelope), record.key, [("content-type", b"application/json")])
        self.stats.dead_lettered += 1
        error("dead_letter", deployment=self.sub.deployment, topic=record.topic, dlq=dlq, offset=record.offset,
              event_id=event["id"] if event is not None else None, attempts=attempts, status=status, error=reason)


# --------------------------------------------------------------------------- ingress
class _IngressHandler(BaseHTTPRequestHandler):
    server: _IngressServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        dispatcher = self.server.dispatcher
        if self.path in ("/healthz", "/health"):
            self._reply(200, {"status": "ok", **dispatcher.health()})
        elif self.path == "/readyz":
            ready = dispatcher.ready()
            self._reply(200 if ready else 503, {"ready": ready, **dispatcher.health()})
        else:
            self._reply(404, {"error": f"no route {self.path}; POST a CloudEvent to /"})

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("content-length")
        if length is None or not length.isdigit():
            return self._reply(411, {"error": "Content-Length is required"})
        if int(length) > 4 * MAX_EVENT_BYTES:
            self.close_connection = True
            return self._reply(413, {"error": f"body of {length} bytes is over the limit of {4 * MAX_EVENT_BYTES}"})
        body = self.rfile.read(int(length))
        try:
            accepted = self.server.dispatcher.ingest(dict(self.headers.items()), body)
        except EventError as exc:
            return self._reply(400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - Kafka unavailable: the sender should retry
            error("ingress_failed", error=f"{type(exc).__name__}: {exc}")
            return self._reply(503, {"error": f"could not write to Kafka: {type(exc).__name__}: {exc}"})
        self._reply(202, {"accepted": accepted})

    def _reply(self, status: int, body: dict) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the per-request stderr line
        pass


class _IngressServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        super().__init__(address, _IngressHandler)


def events_from_request(headers: Mapping[str, str], body: bytes) -> list:
    """A POSTed CloudEvent (binary or structured) or batch; EventError names the problem."""
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "").lower()
    try:
        if not content_type.startswith(BATCH_CONTENT_TYPE):
            found = [from_http(dict(headers), body)]
        else:
            try:
                items = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise EventError(f"batch is not JSON: {exc}") from None
            if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
                raise EventError("a batch must be a non-empty JSON list of structured CloudEvents")
            found = [from_dict(item) for item in items]
    except ce_errors.GenericException as exc:
        raise EventError(f"not a valid CloudEvent: {exc}") from None
    for event in found:
        _check_attributes(event.get_attributes())
    return found


# --------------------------------------------------------------------------- the dispatcher
class Dispatcher:
    """Consumer loops for every subscription plus the ingress; `start()`, `stop()`."""

    def __init__(self, settings: DispatchSettings, routes: Routes):
        self.settings, self.routes = settings, routes
        self._stop = threading.Event()
        self.producer: EventProducer | None = None
        self.loops: list[ConsumerLoop] = []
        self._server: _IngressServer | None = None
        self._server_thread: threading.Thread | None = None

    @property
    def ingress_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the dispatcher is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self, ingress: bool = True) -> Dispatcher:
        self.producer = EventProducer(self.settings.bootstrap_servers)
        if ingress:  # bind first: a port in use fails before any consumer joins a group
            self._server = _IngressServer((self.settings.ingress_host, self.settings.ingress_port), self)
            self._server_thread = threading.Thread(target=self._server.serve_forever, name="ingress", daemon=True)
            self._server_thread.start()
        for sub in self.routes.subscriptions:
            loop = ConsumerLoop(sub, self.routes, self.settings, self.producer, self._stop)
            loop.start()
            self.loops.append(loop)
        log("dispatcher_started", ingress=self.ingress_url if ingress else None,
            deployments=[s.deployment for s in self.routes.subscriptions])
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop polling (a delivery in its backoff wait is abandoned, its record left uncommitted)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for loop in self.loops:
            loop.join(timeout)
        if self.producer is not None:
            self.producer.close()
        log("dispatcher_stopped")

    def ready(self) -> bool:
        return all(loop.is_alive() and loop.stats.assigned for loop in self.loops)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"dispatcher consumers not assigned after {timeout:.0f}s: {self.health()}")
            time.sleep(0.1)

    def health(self) -> dict:
        return {"consumers": {loop.sub.deployment: {"alive": loop.is_alive(), "group": loop.group,
                                                    "url": loop.sub.url, **vars(loop.stats)}
                              for loop in self.loops}}

    def ingest(self, headers: Mapping[str, str], body: bytes) -> list[dict]:
        """Write POSTed events to the topics of their types (all checked before any is written)."""
        found = events_from_request(headers, body)
        planned = []
        for event in found:
            topic = self.routes.topic_of(event["type"])
            if event["type"] in events.EVENT_MODELS:
                events.parse_data(event)  # a claim that breaks its contract is refused here, not downstream
            planned.append((topic, event))
        accepted = []
        for topic, event in planned:
            offset = self.producer.send_event(topic, event)
            accepted.append({"id": event["id"], "type": event["type"], "topic": topic, "offset": offset})
        log("ingress_accepted", events=[(a["type"], a["id"]) for a in accepted])
        return accepted


def main(env: Env | None = None) -> int:
    import os

    set_component("dispatcher")
    env = os.environ if env is None else env
    try:
        settings = DispatchSettings.from_env(env)
        routes = routes_from_table(parse_targets(env_str(env, "DISPATCH_TARGETS", "")))
    except ConfigError as exc:
        error("dispatcher_config", error=str(exc))
        return 2
    if not routes.subscriptions:
        warn("dispatcher_no_targets", hint="set DISPATCH_TARGETS=deployment=url,...; only the ingress runs")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    dispatcher = Dispatcher(settings, routes).start()
    try:
        stopping.wait()
    finally:
        dispatcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
