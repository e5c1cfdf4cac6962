"""Which deployments the dispatcher feeds, from where, and which topic each event type travels on.

Everything is read from the shared routing table (`flts.routing`); DISPATCH_TARGETS only says
which of its deployments run, and where. Tests pass their own topics.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flts import routing
from flts.events import EventError
from flts.settings import ConfigError


@dataclass(frozen=True)
class Subscription:
    """One deployment, where it listens, and which topics feed it."""

    deployment: str
    url: str
    event_types: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Routes:
    topics: Mapping[str, str] = field(default_factory=lambda: routing.TOPICS)  # event type -> topic
    subscriptions: tuple[Subscription, ...] = ()

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
    return Routes(topics, tuple(subscriptions))  # the table itself, not a copy that could drift
