"""The event dispatcher: Kafka → HTTP CloudEvents, and an ingress that writes events back.

It plays, on one machine (and on OpenFaaS CE, which has no Kafka connector), the part that
Knative's KafkaSource + Broker play on a cluster:

- For every deployment in the routing table that has a URL, one consumer loop (a thread
  in the deployment's consumer group `flts-<deployment>`) reads the topics of the event types the
  deployment subscribes to, POSTs each event as a binary-mode CloudEvent, and commits the
  offset only after the event is settled (at-least-once; auto-commit is off). A deployment
  with several URLs (replicas) has a loop per URL in that one group, so Kafka shares the
  partitions out among the replicas.
- Up to DISPATCH_CONCURRENCY deliveries per loop are in flight at once; events with the
  same Kafka key (the dataset identifier) go one after the other, in order. The committed
  offset is each partition's watermark: it never passes an event that has not settled.
- Settled means: a 2xx (its reply events written to their topics first), or a dead letter
  written to `dlq-<topic>`. 5xx/408/409/429 and connection errors are retried with
  exponential backoff honouring Retry-After, up to DISPATCH_MAX_RETRIES; any other 4xx
  goes to the dead-letter topic at once (the rule: `flts.outcomes`). A message that is not
  a CloudEvent, or whose type the deployment does not take, is dead-lettered too: a poison
  message never blocks a topic.
- Replies: a binary (or structured) CloudEvent, or an `application/cloudevents-batch+json`
  list, answered with a 2xx is written to the topic of its type.
- Ingress (HTTP, what functions use as K_SINK): POST a CloudEvent (binary, structured or
  batch) and it is written to the topic of its type before the 202 goes back. Each function
  posts to its own path `/from/<deployment>`; such a post is taken only while a delivery to
  that deployment is in flight (409 otherwise: it is the output of a delivery the dispatcher
  no longer waits for, e.g. before a restart, whose input is uncommitted and comes again).
- Each outcome is written once (`dedup`): a repeat of an event already written in the same
  upload's chain is not written again.

Modules, one concern each: `settings` (DispatchSettings), `routes` (the routing table as
subscriptions and topics), `codec` (Kafka message ⇄ CloudEvent), `producer` (EventProducer,
`publish`), `delivery` (POST, retry, replies, dead-letter envelope), `consumer` (ConsumerLoop), `lanes` (KeyedPool:
per-key order across worker threads), `watermark` (how far a commit may go),
`ingress` (the HTTP ingress), `dedup` (each outcome written once), `deadletters` (count,
replay); here the Dispatcher that runs them and `main`.

Settings (environment): `settings.DispatchSettings`, the table in docs/local-stack.md.

Run: `python -m flts.dispatcher` (or eventing/dispatcher/main.py).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Mapping

from flts import events
from flts.dispatcher.codec import event_from_kafka, event_to_kafka, kafka_key
from flts.dispatcher.consumer import ConsumerLoop
from flts.dispatcher.dedup import Written, seed, write_once
from flts.dispatcher.ingress import IngressServer, NotInFlight, events_from_request
from flts.dispatcher.producer import EventProducer, publish
from flts.dispatcher.routes import Routes, Subscription, parse_targets, replica_targets, routes_from_table
from flts.dispatcher.settings import DispatchSettings
from flts.logs import configure, error, log, warn
from flts.settings import ConfigError, Env

__all__ = [
    "Dispatcher", "DispatchSettings", "EventProducer", "Routes", "Subscription", "event_from_kafka",
    "event_to_kafka", "main", "parse_targets", "publish", "replica_targets", "routes_from_table",
]


class Dispatcher:
    """Consumer loops for every subscription plus the ingress; `start()`, `stop()`."""

    def __init__(self, settings: DispatchSettings, routes: Routes):
        self.settings, self.routes = settings, routes
        self._stop = threading.Event()
        self.producer: EventProducer | None = None
        self.loops: list[ConsumerLoop] = []
        self.written = Written()
        self._server: IngressServer | None = None
        self._server_thread: threading.Thread | None = None

    @property
    def ingress_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the dispatcher is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self, ingress: bool = True) -> Dispatcher:
        self.producer = EventProducer(self.settings.bootstrap_servers)
        seed(self.written, self.settings.bootstrap_servers, sorted(set(self.routes.topics.values())))
        if ingress:  # bind first: a port in use fails before any consumer joins a group
            self._server = IngressServer((self.settings.ingress_host, self.settings.ingress_port), self)
            self._server_thread = threading.Thread(target=self._server.serve_forever, name="ingress", daemon=True)
            self._server_thread.start()
        for sub in self.routes.subscriptions:
            loop = ConsumerLoop(sub, self.routes, self.settings, self.producer, self._stop, self.written)
            loop.start()
            self.loops.append(loop)
        log("dispatcher_started", ingress=self.ingress_url if ingress else None,
            consumers=[s.name for s in self.routes.subscriptions], keys_read_back=len(self.written))
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
        """Every consumer runs and has joined its group (a replica beyond the partitions joins with none)."""
        return all(loop.is_alive() and loop.stats.joined for loop in self.loops)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"dispatcher consumers not joined after {timeout:.0f}s: {self.health()}")
            time.sleep(0.1)

    def health(self) -> dict:
        return {"consumers": {loop.sub.name: {"alive": loop.is_alive(), "group": loop.group,
                                              "url": loop.sub.url, **vars(loop.stats)}
                              for loop in self.loops}}

    def ingest(self, headers: Mapping[str, str], body: bytes, sender: str | None = None) -> list[dict]:
        """Write POSTed events to the topics of their types (all checked before any is written).

        sender: the deployment that posted (its K_SINK path); its delivery in flight gives the
        chain's root, and without one in flight the post is refused (NotInFlight).
        """
        found = events_from_request(headers, body)
        roots = [None] * len(found) if sender is None else self._roots_in_flight(sender, found)
        planned = []
        for event in found:
            topic = self.routes.topic_of(event["type"])
            if event["type"] in events.EVENT_MODELS:
                events.parse_data(event)  # a claim that breaks its contract is refused here, not downstream
            planned.append((topic, event))
        accepted = []
        for (topic, event), root in zip(planned, roots, strict=True):
            offset, duplicate = write_once(self.producer, self.written, topic, event, root)
            accepted.append({"id": event["id"], "type": event["type"], "topic": topic, "offset": offset,
                             "duplicate": duplicate})
        log("ingress_accepted", sender=sender, events=[(a["type"], a["id"]) for a in accepted],
            duplicates=[a["id"] for a in accepted if a["duplicate"]])
        return accepted

    def _roots_in_flight(self, sender: str, found: list) -> list[str | None]:
        """Each posted event's chain root: that of the delivery in flight with the same Kafka key (the
        dataset; one per key at a time), else the one root all deliveries in flight share. A key is on one
        partition, so on one replica's loop: the replicas' deliveries in flight are merged."""
        roots = {key: root for loop in self.loops if loop.sub.deployment == sender
                 for key, root in loop.roots_in_flight().items()}
        if not roots:
            raise NotInFlight(f"no delivery to {sender!r} is in flight: this output belongs to a delivery the "
                              f"dispatcher no longer waits for (its input is uncommitted and will come again)")
        shared = set(roots.values())
        only = shared.pop() if len(shared) == 1 else None
        matched = []
        for event in found:
            key = kafka_key(event)
            root = roots.get(key.encode() if key else None) or only
            if root is None:  # written without a chain root: no dedup for it, but never lost
                warn("ingress_root_unknown", sender=sender, event_id=event["id"], key=key, in_flight=len(roots))
            matched.append(root)
        return matched


def main(env: Env | None = None) -> int:
    import os

    env = os.environ if env is None else env
    try:
        configure(env, component="dispatcher")
    except ConfigError as exc:  # logging itself is what is misconfigured: say it plainly
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    try:
        settings = DispatchSettings.from_env(env)
        routes = routes_from_table(replica_targets(settings.targets))
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
