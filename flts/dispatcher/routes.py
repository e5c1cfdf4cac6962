"""Which deployments the dispatcher feeds, from where, and which topic each event type travels on.

Everything is read from the shared routing table (`flts.routing`); DISPATCH_TARGETS only says
which of its deployments run, and where. A deployment listed more than once has replicas: one
subscription (one consumer, in the deployment's one group) per URL, so Kafka's group shares the
partitions out among them. Tests pass their own topics.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flts import routing
from flts.events import EventError
from flts.settings import ConfigError


@dataclass(frozen=True)
class Subscription:
    """One deployment (one replica of it), where it listens, and which topics feed it."""

    deployment: str
    url: str
    event_types: tuple[str, ...]
    topics: tuple[str, ...]
    replica: int = 0  # 0-based; every replica of a deployment consumes in the same group

    @property
    def name(self) -> str:
        """The replica's name: the deployment's for the first, `<deployment>-<n>` for the others."""
        return routing.replica_name(self.deployment, self.replica)


@dataclass(frozen=True)
class Routes:
    topics: Mapping[str, str] = field(default_factory=lambda: routing.TOPICS)  # event type -> topic
    subscriptions: tuple[Subscription, ...] = ()

    def topic_of(self, event_type: str) -> str:
        try:
            return self.topics[event_type]
        except KeyError:
            raise EventError(f"no topic for event type {event_type!r} (known: {sorted(self.topics)})") from None


def replica_targets(raw: str) -> dict[str, tuple[str, ...]]:
    """`preprocess=http://a:1,preprocess=http://a:2,eval=http://...` → {deployment: (url, ...)}: a
    deployment named more than once has one replica per URL, in order."""
    targets: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ConfigError(f"DISPATCH_TARGETS entry {item!r} must look like deployment=http://host:port")
        targets[name.strip()] = (*targets.get(name.strip(), ()), url.strip())
    return targets


def parse_targets(raw: str) -> dict[str, str]:
    """`preprocess=http://127.0.0.1:18100,eval=http://...` → {deployment: url}, one URL each."""
    targets = replica_targets(raw)
    repeated = sorted(name for name, urls in targets.items() if len(urls) > 1)
    if repeated:
        raise ConfigError(f"DISPATCH_TARGETS names {repeated} more than once (replicas: read it with replica_targets)")
    return {name: urls[0] for name, urls in targets.items()}


def routes_from_table(
    targets: Mapping[str, str | Sequence[str]],
    deployments: tuple[routing.Deployment, ...] = routing.DEPLOYMENTS,
    topics: Mapping[str, str] = routing.TOPICS,
) -> Routes:
    """The shared routing table, restricted to the deployments that have a URL (a subscription per URL)."""
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
        urls = (targets[d.name],) if isinstance(targets[d.name], str) else tuple(targets[d.name])
        feeds = tuple(dict.fromkeys(topics[t] for t in d.subscribes))
        subscriptions += [Subscription(d.name, url, tuple(d.subscribes), feeds, replica)
                          for replica, url in enumerate(urls)]
    return Routes(topics, tuple(subscriptions))  # the table itself, not a copy that could drift
