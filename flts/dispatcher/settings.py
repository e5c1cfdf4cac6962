"""The dispatcher's settings, read from the environment (documented in flts/dispatcher/__init__.py)."""
from __future__ import annotations

from typing import Any, Literal

from flts.settings import Settings, knob


class DispatchSettings(Settings):
    bootstrap_servers: str = knob("KAFKA_BOOTSTRAP_SERVERS", ..., "host:port of the Kafka broker")
    targets: str = knob("DISPATCH_TARGETS", "",
                        "deployment=url,... to deliver to; names must be in the routing table; empty = ingress only")
    max_retries: int = knob("DISPATCH_MAX_RETRIES", 5, "retries after the first attempt, then the dead-letter topic", ge=0)
    # 1, 2, 4, 8, 16 s: the default retries wait 31 s in all, past a 20 s outage of S3 or MLflow (Knative's PT1S too)
    backoff_base: float = knob("DISPATCH_BACKOFF_BASE_SEC", 1.0, "first retry's wait; doubles per retry", ge=0)
    backoff_max: float = knob("DISPATCH_BACKOFF_MAX_SEC", 30.0, "longest backoff wait", ge=0)
    retry_after_max: float = knob("DISPATCH_RETRY_AFTER_MAX_SEC", 60.0, "cap on an honoured Retry-After", ge=0)
    timeout: float = knob("DISPATCH_TIMEOUT_SEC", 900.0,
                          "one HTTP attempt (a trainer answers when training is done)", gt=0)
    connect_timeout: float = knob("DISPATCH_CONNECT_TIMEOUT_SEC", 5.0, "connecting to the function", gt=0)
    concurrency: int = knob(
        "DISPATCH_CONCURRENCY", 32,
        "deliveries in flight per deployment; events with the same Kafka key (dataset) still go one at a time, in order",
        ge=1)
    limits: str = knob("DISPATCH_LIMITS", "", "deployment=n,...: deliveries in flight to that deployment at most (what "
                       "its instances take at once); unlisted = DISPATCH_CONCURRENCY")
    group_prefix: str = knob("DISPATCH_GROUP_PREFIX", "flts-", "consumer group = prefix + deployment")
    offset_reset: Literal["earliest", "latest"] = knob(
        "DISPATCH_OFFSET_RESET", "earliest",
        "where a new consumer group starts: earliest also delivers events produced before the dispatcher first ran")
    ingress_host: str = knob("DISPATCH_INGRESS_HOST", "127.0.0.1", "address of the ingress (K_SINK of every function)")
    ingress_port: int = knob("DISPATCH_INGRESS_PORT", 18090, "port of the ingress; 0 = any free port", ge=0)

    def __init__(self, bootstrap_servers: str | None = None, **values: Any) -> None:
        # Code builds it as DispatchSettings("host:9092", max_retries=...); from_env by variable names.
        if bootstrap_servers is not None:
            values["bootstrap_servers"] = bootstrap_servers
        super().__init__(**values)

    def concurrency_for(self, deployment: str) -> int:
        """Deliveries in flight to `deployment`: DISPATCH_CONCURRENCY, capped by its DISPATCH_LIMITS entry."""
        for item in filter(None, (part.strip() for part in self.limits.split(","))):
            name, _, value = item.partition("=")
            if name.strip() == deployment:
                if not value.strip().isdigit() or int(value) < 1:
                    raise ValueError(f"DISPATCH_LIMITS: {item!r} needs a whole number >= 1 after '='")
                return min(self.concurrency, int(value))
        return self.concurrency

    def max_poll_interval_ms(self) -> int:
        """Longest time one record may take (every attempt timing out, every wait at its cap).

        The consumer must not be thrown out of its group while a slow function (a training
        run) is still answering, or the record would be handed to another member mid-flight.
        """
        worst = (self.max_retries + 1) * (self.timeout + self.connect_timeout)
        worst += self.max_retries * max(self.backoff_max, self.retry_after_max)
        return int((worst + 60) * 1000)
