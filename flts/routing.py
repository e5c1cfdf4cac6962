"""The routing table: which event type travels on which topic and which deployments get it.

Derived from the functions' specs (`flts.<function>.SPEC`): a deployment is one variant of a
function (a trainer per MODEL_TYPE) subscribed to the event types that function takes. The
embedded router, the local dispatcher and the generated Knative/OpenFaaS wiring all read
this table, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flts import eval as eval_function
from flts import events, gateway, infer, preprocess, train
from flts.spec import FunctionSpec


@dataclass(frozen=True)
class Deployment:
    """One running copy of a function with its own settings (a trainer per MODEL_TYPE)."""

    name: str
    spec: FunctionSpec
    env: dict[str, str] = field(default_factory=dict)

    @property
    def function(self) -> str:  # the folder under functions/
        return self.spec.name

    @property
    def subscribes(self) -> tuple[str, ...]:
        return self.spec.takes

    def __hash__(self) -> int:
        return hash(self.name)


SPECS: tuple[FunctionSpec, ...] = (preprocess.SPEC, train.SPEC, eval_function.SPEC, infer.SPEC, gateway.SPEC)

TOPICS: dict[str, str] = {
    events.DATASET_READY: "dataset-ready",
    events.TRAINING_DATA: "training-data",
    events.INFERENCE_DATA: "inference-data",
    events.MODEL_TRAINING: "model-training",
    events.MODEL_SELECTED: "model-selected",
}

DEPLOYMENTS: tuple[Deployment, ...] = tuple(
    Deployment(variant.name, spec, variant.env) for spec in SPECS for variant in spec.deployments()
)


def topic_of(event_type: str) -> str:
    try:
        return TOPICS[event_type]
    except KeyError:
        raise events.EventError(f"no topic for event type {event_type!r}") from None


def dlq_topic(topic: str) -> str:
    return f"dlq-{topic}"


def all_topics() -> list[str]:
    return [*TOPICS.values(), *(dlq_topic(t) for t in TOPICS.values())]


def subscribers(event_type: str) -> list[Deployment]:
    return [d for d in DEPLOYMENTS if event_type in d.subscribes]


def replica_name(deployment_name: str, index: int) -> str:
    """What replica `index` (0-based) of a deployment is called: the deployment's own name for the
    first, `<name>-<n>` (n from 2) for the others (`fn-train-gru-2` on the local stack)."""
    return deployment_name if index == 0 else f"{deployment_name}-{index + 1}"


def deployment(name: str) -> Deployment:
    for d in DEPLOYMENTS:
        if d.name == name:
            return d
    raise KeyError(f"no deployment named {name!r} (known: {[d.name for d in DEPLOYMENTS]})")


def function_spec(name: str) -> FunctionSpec:
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise KeyError(f"no function named {name!r} (known: {[s.name for s in SPECS]})")
