"""Where the gateway's `flts.dataset.ready` goes.

- K_SINK set (the local stack: the dispatcher's ingress `/`; Knative: the dataset-ready KafkaSink;
  OpenFaaS: the dispatcher): POSTed there with the sender's token (flts.auth.sender_token:
  Knative's SinkBinding token for the sink, else EVENT_TOKEN). The ingress answers 202 only once
  Kafka has the event, and 503 once its producer gave up (flts.dispatcher.producer), so any
  failure here means "not written": the upload answers 503 and a retry may send it again.
- K_SINK empty (embedded): published to an in-process EmbeddedRouter, run on one worker thread.
"""
from __future__ import annotations

import queue
import threading
import urllib.error
from collections.abc import Callable

from flts.auth import sender_token
from flts.function_http import post_event
from flts.logs import log
from flts.settings import Env


class Unavailable(RuntimeError):
    """The event could not be handed over now (Kafka or the ingress down): try again later."""


class Refused(RuntimeError):
    """The sink refused the event (4xx): retrying will not help."""


Emitter = Callable[[object], None]


def sink_emitter(sink: str, token: Callable[[], str], timeout: float) -> Emitter:
    """POST each event to `sink` with the bearer token `token()` gives at that moment."""
    def emit(event) -> None:
        try:
            post_event(sink, event, timeout=timeout, token=token())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            if exc.code >= 500 or exc.code in (408, 429):
                raise Unavailable(f"K_SINK answered {exc.code}: {detail}") from None
            raise Refused(f"K_SINK refused the event with {exc.code}: {detail}") from None
        except (OSError, TimeoutError) as exc:  # refused connection, timeout: nothing was written
            raise Unavailable(f"K_SINK {sink} unreachable: {type(exc).__name__}: {exc}") from None
    return emit


class EmbeddedEmitter:
    """The embedded mode: every deployment of the routing table in this process, one event chain at a time."""

    def __init__(self, env: Env, deployments=None):
        from flts import routing
        from flts.embedded import EmbeddedRouter

        self.router = EmbeddedRouter(dict(env), routing.DEPLOYMENTS if deployments is None else deployments)
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="gateway-embedded", daemon=True).start()

    def __call__(self, event) -> None:
        self._queue.put(event)

    def _work(self) -> None:
        while True:
            event = self._queue.get()
            self.router.publish(event)
            for delivery in self.router.run():
                log("embedded_delivery", deployment=delivery.deployment, event_type=delivery.event_type,
                    error=delivery.error)


def emitter_from_env(env: Env, timeout: float) -> Emitter:
    sink = env.get("K_SINK", "").strip()
    return sink_emitter(sink, lambda: sender_token(env), timeout) if sink else EmbeddedEmitter(env)
