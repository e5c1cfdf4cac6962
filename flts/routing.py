"""The routing table: which event type travels on which topic and which deployments get it.

One table drives the embedded router, the local Kafka dispatcher and the generated
Knative/OpenFaaS wiring, so the three cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flts import events


@dataclass(frozen=True)
class Deployment:
    """One running copy of a function folder with its own settings (a trainer per MODEL_TYPE)."""

    name: str
    function: str  # folder under functions/
    subscribes: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    handler: str = ""  # "module:attribute" of the CloudEvent handler

    def __hash__(self) -> int:
        return hash(self.name)


TOPICS: dict[str, str] = {
    events.DATASET_READY: "dataset-ready",
    events.TRAINING_DATA: "training-data",
    events.INFERENCE_DATA: "inference-data",
    events.MODEL_TRAINING: "model-training",
    events.MODEL_SELECTED: "model-selected",
}

MODEL_TYPES = ("GRU", "LSTM", "PROPHET")

DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("preprocess", "preprocess", (events.DATASET_READY,), handler="flts.preprocess.handler:handle"),
    *(
        Deployment(f"train-{m.lower()}", "train", (events.TRAINING_DATA,), {"MODEL_TYPE": m}, "flts.train.handler:handle")
        for m in MODEL_TYPES
    ),
    Deployment("eval", "eval", (events.MODEL_TRAINING,), handler="flts.eval.handler:handle"),
    Deployment("infer", "infer", (events.MODEL_SELECTED, events.INFERENCE_DATA), handler="flts.infer.handler:handle"),
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


def deployment(name: str) -> Deployment:
    for d in DEPLOYMENTS:
        if d.name == name:
            return d
    raise KeyError(f"no deployment named {name!r} (known: {[d.name for d in DEPLOYMENTS]})")
