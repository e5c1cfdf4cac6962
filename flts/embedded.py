"""The embedded event bus: one process, events delivered in-process by the routing table.

Each emitted CloudEvent goes to every deployment subscribed to its type, with that
deployment's own environment (e.g. MODEL_TYPE) layered over the process's. A handler
that fails is recorded as a dead letter, as the Kafka dispatcher would do, and the
rest of the events still flow.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flts import routing
from flts.logs import log, set_component
from flts.outcomes import Outcome, outcome_of_exception
from flts.settings import Env
from flts.spec import FunctionSpec, Handler


@dataclass
class Delivery:
    deployment: str
    event_type: str
    seconds: float
    emitted: list[str]
    error: str | None = None


@dataclass
class EmbeddedRouter:
    env: Env
    deployments: Iterable[routing.Deployment] = routing.DEPLOYMENTS
    on_delivery: Callable[[Delivery], None] | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    published: list = field(default_factory=list)
    _queue: deque = field(default_factory=deque)
    _handlers: dict = field(default_factory=dict)

    def publish(self, event) -> None:
        routing.topic_of(event["type"])  # an event nobody could route is a bug: fail here, loudly
        self.published.append(event)
        self._queue.append(event)

    def run(self, max_events: int = 10_000) -> list[Delivery]:
        """Deliver until no event is left; returns the deliveries made by this call."""
        start = len(self.deliveries)
        while self._queue:
            if len(self.published) > max_events:
                raise RuntimeError(f"more than {max_events} events: a routing loop?")
            event = self._queue.popleft()
            for deployment in self._subscribers(event["type"]):
                self._deliver(deployment, event)
        return self.deliveries[start:]

    def dead_letters(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.error]

    def _subscribers(self, event_type: str) -> list[routing.Deployment]:
        return [d for d in self.deployments if event_type in d.subscribes]

    def _handler(self, spec: FunctionSpec) -> Handler:
        if spec.handler not in self._handlers:
            self._handlers[spec.handler] = spec.load_handler()
        return self._handlers[spec.handler]

    def _deliver(self, deployment: routing.Deployment, event) -> None:
        set_component(deployment.name)  # log lines name the function, as in their own process
        started = time.perf_counter()
        try:
            # Loading inside the try: a deployment whose code is missing dead-letters, the bus goes on.
            emitted = list(self._handler(deployment.spec)(event, {**self.env, **deployment.env}) or [])
            for out in emitted:  # refuse the whole output before any of it is published
                routing.topic_of(out["type"])
            error = None
        except Exception as exc:  # noqa: BLE001 - a dead letter, not a crash of the bus
            # "rejected": what the HTTP entry answers 4xx for, so no transport would retry it either
            rejected = outcome_of_exception(exc) is Outcome.DEAD_LETTER
            emitted, error = [], f"rejected: {exc}" if rejected else f"{type(exc).__name__}: {exc}"
        delivery = Delivery(deployment.name, event["type"], time.perf_counter() - started,
                            [e["type"] for e in emitted], error)
        if error:
            log("dead_letter", level="error", deployment=deployment.name, event_type=event["type"], error=error)
        self.deliveries.append(delivery)
        if self.on_delivery:
            self.on_delivery(delivery)
        for out in emitted:
            self.publish(out)
