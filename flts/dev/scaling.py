"""Horizontal scale on one machine, the way a cluster does it: replicas, partitions, consumer lag.

A deployment with n replicas is n function processes (ports of their own); the dispatcher
has one consumer per replica, all in the deployment's one consumer group, so Kafka's group
shares the topics' partitions out among them. Events are keyed by dataset, and a key stays
on its partition, so one dataset's events still reach one replica, in order. A replica
beyond the partitions a topic has gets nothing from it: `replica_warnings` says so.

`flts status` reports, per deployment, the replicas up of those planned and the group's
lag: what is on the topics and not yet committed by the group (`group_states`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flts import routing
from flts.settings import ConfigError, Settings, knob
from flts.spec import Scaling

MAX_REPLICAS = 8  # two shared cores: more would only queue on the CPU


class ScaleSettings(Settings):
    """The local stack's scale: `flts up` reads them from its environment."""

    replicas: str = knob(
        "FLTS_REPLICAS", "",
        f"deployment=n,...: processes per deployment, 1 to {MAX_REPLICAS} (a function's name counts for all its "
        "deployments: train=2); event workers only (preprocess, the trainers, eval); unlisted = 1; "
        "`flts up --replicas` overrides it")
    partitions: int = knob(
        "FLTS_TOPIC_PARTITIONS", 4,
        "partitions of each topic `flts up` creates (an existing topic with fewer is grown); a deployment's "
        "replicas beyond its topics' partitions get no events", ge=1, le=64)


def scalable(deployment: routing.Deployment) -> bool:
    """Event workers scale out; a request server has one public port (infer's front door, the gateway)."""
    return deployment.spec.scaling is Scaling.EVENT_WORKER and bool(deployment.subscribes)


def parse_replicas(raw: str) -> dict[str, int]:
    """`train-gru=2,eval=2` or `train=2` (every trainer) → {deployment: replicas}; ConfigError names a bad entry."""
    replicas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, count = (part.strip() for part in item.partition("="))
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise ConfigError(f"replicas: {item!r} must look like deployment=n with n from 1 to {MAX_REPLICAS}")
        for deployment in _deployments_named(name):
            replicas[deployment.name] = int(count)
    return replicas


def _deployments_named(name: str) -> list[routing.Deployment]:
    found = [d for d in routing.DEPLOYMENTS if name in (d.name, d.function)]
    if not found:
        raise ConfigError(f"replicas: no deployment or function {name!r} (known: {[d.name for d in routing.DEPLOYMENTS]})")
    fixed = [d.name for d in found if not scalable(d)]
    if fixed:
        raise ConfigError(f"replicas: {fixed} cannot have replicas: only event workers scale out "
                          f"(infer scales by its front door, the gateway is the one way in)")
    return found


def replica_warnings(replicas: Mapping[str, int], partitions: Mapping[str, int]) -> list[str]:
    """A line for each deployment with more replicas than its topics have partitions to share out.

    The group gives a topic's partitions to its first members only, so a deployment can use as
    many replicas as its busiest-partitioned topic has partitions (`partitions`: topic → count)."""
    warnings = []
    for name, count in replicas.items():
        topics = topics_of(name)
        usable = max((partitions.get(t, 0) for t in topics), default=0)
        if count > usable:
            warnings.append(f"{name}: {count} replicas, but its topic(s) {', '.join(topics)} have {usable} "
                            f"partition(s): {count - usable} replica(s) will get no events "
                            f"(FLTS_TOPIC_PARTITIONS={count} or more, then `flts up`)")
    return warnings


def topics_of(deployment: str) -> tuple[str, ...]:
    """The topics a deployment's consumer group reads."""
    return tuple(dict.fromkeys(routing.topic_of(t) for t in routing.deployment(deployment).subscribes))


def consumer_lag(ends: Mapping, committed: Mapping, beginnings: Mapping, from_start: bool = True) -> int:
    """Records on the partitions (keys of `ends`: their end offsets) the group has not committed past.

    A partition the group never committed counts from its beginning when the group starts there
    (DISPATCH_OFFSET_RESET=earliest), else nothing (latest: it starts at the end)."""
    lag = 0
    for tp, end in ends.items():
        done = committed.get(tp)
        if done is None:
            done = beginnings.get(tp, 0) if from_start else end
        lag += max(0, end - done)
    return lag


@dataclass(frozen=True)
class GroupState:
    """A consumer group as Kafka sees it: its members now, its lag, and its topics' partition counts."""

    group: str
    members: int
    lag: int
    partitions: dict[str, int]


def group_states(bootstrap: str, groups: Mapping[str, tuple[str, ...]], from_start: bool = True,
                 timeout_ms: int = 5000) -> dict[str, GroupState]:
    """{group: GroupState} for groups → the topics they read; one admin client and one group-less consumer."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flts-status", request_timeout_ms=timeout_ms)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="flts-status", enable_auto_commit=False,
                             request_timeout_ms=timeout_ms + 1000)
    try:
        described = admin.describe_groups(list(groups))
        states = {}
        for group, topics in groups.items():
            parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            committed = {tp: meta.offset for tp, meta in admin.list_group_offsets({group: parts}).get(group, {}).items()
                         if meta is not None and meta.offset >= 0}
            lag = consumer_lag(consumer.end_offsets(parts), committed, consumer.beginning_offsets(parts), from_start)
            counts = {t: sum(tp.topic == t for tp in parts) for t in topics}
            states[group] = GroupState(group, len(described.get(group, {}).get("members") or ()), lag, counts)
        return states
    finally:
        consumer.close(autocommit=False)
        admin.close()
