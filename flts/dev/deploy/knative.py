"""Knative objects: a Service per deployment, and the Kafka eventing around them.

Event wiring: a Kafka-class Broker with one Trigger per (deployment, event type), rather
than a KafkaSource per subscription, because
  * one function emits several event types through its one K_SINK (preprocess:
    training-data and inference-data). A Broker routes each event by `type`; a KafkaSink
    writes a single topic, so K_SINK → KafkaSink could not carry both;
  * the routing table is "event type → subscribers", which is exactly a Trigger filter;
  * each Trigger has its own delivery spec (retries, exponential backoff, a dead-letter
    KafkaSink into `dlq-<topic>`) and consumer group, so a slow trainer holds back no one.
Around the Broker: a KafkaSource bridges the topics nothing in the cluster produces
(`dataset-ready`, written by uploads) into the Broker, and "record" Triggers copy every
emitted event into its named topic through a KafkaSink, so the topics of the contract
carry the same events as on the local stack. The two sets are disjoint, so no loop.
A function that takes no events (the gateway) starts chains, like an upload written to Kafka: its
K_SINK is the KafkaSink of the topic it emits (`dataset-ready`), and the KafkaSource brings its
events into the Broker with the others; recording them too would loop.

The Service runs the image's server directly on :8080 (`python /app/index.py --listen
0.0.0.0:8080`) instead of its default of-watchdog, so queue-proxy talks to it with no extra hop.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from flts import routing
from flts.dev.deploy.cluster import (
    APP_UID,
    CONFIG,
    DEFAULTS,
    KAFKA_BOOTSTRAP,
    RETRIES,
    RenderOptions,
    cold_start_seconds,
    config_keys,
    delivery_seconds,
    deployment_env,
    emitters,
    image,
    own_secret_keys,
    shared_secret_keys,
)
from flts.routing import Deployment
from flts.spec import FunctionSpec

BROKER = "flts"
CONFIGMAP = "flts-config"
SECRET = "flts-credentials"  # the keys functions share (tokens)
S3_SECRET_PREFIX = "flts-s3-"  # + function: its own S3 account (S3_ACCESS_KEY, S3_SECRET_KEY)
KAFKA_PARTITIONS = 3
BACKOFF_DELAY = "PT1S"  # exponential: 1 s, 2 s, 4 s, 8 s, 16 s

SERVICE_API = ("serving.knative.dev/v1", "Service")
BROKER_API = ("eventing.knative.dev/v1", "Broker")
TRIGGER_API = ("eventing.knative.dev/v1", "Trigger")
KAFKA_SINK_API = ("eventing.knative.dev/v1alpha1", "KafkaSink")
KAFKA_SOURCE_API = ("sources.knative.dev/v1beta1", "KafkaSource")
SINK_BINDING_API = ("sources.knative.dev/v1", "SinkBinding")
EVENT_POLICY_API = ("eventing.knative.dev/v1alpha1", "EventPolicy")
SINK_TOKEN_FILE = "/oidc/token"  # where a SinkBinding mounts its sink's OIDC token (sender identity)


# --------------------------------------------------------------------------- building blocks
def _object(api: tuple[str, str], metadata: dict, **body: Any) -> dict:
    """One Kubernetes object, keys in the order kubectl shows them."""
    return {"apiVersion": api[0], "kind": api[1], "metadata": metadata, **body}


def _meta(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "flts", **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _event_meta(name: str, event_type: str) -> dict:
    """Metadata of an object that carries one event type (Triggers, KafkaSources)."""
    return _meta(name, {"flts.dev/event-type": event_type})


def _ref(api: tuple[str, str], name: str) -> dict:
    return {"ref": {"apiVersion": api[0], "kind": api[1], "name": name}}


def _config_keys() -> list[str]:
    """ConfigMap keys some function reads, sorted."""
    return sorted({k for spec in routing.SPECS for k in config_keys(spec)})


def _shared_secret_keys() -> list[str]:
    """Keys of the shared Secret some function reads, sorted."""
    return sorted({k for spec in routing.SPECS for k in shared_secret_keys(spec)})


def s3_secret_name(function: str) -> str:
    """The Secret holding one function's own S3 account."""
    return f"{S3_SECRET_PREFIX}{function}"


def starts_chains(d: Deployment) -> bool:
    """A deployment that takes no events (the gateway): what it emits enters through Kafka, as uploads do."""
    return not d.subscribes


def emitted_types() -> list[str]:
    """Event types some function inside a chain emits, in routing-table order (recorded into their topics)."""
    emitted = {t for d in emitters() if not starts_chains(d) for t in d.spec.emits}
    return [t for t in routing.TOPICS if t in emitted]


def _chain_start_sink(d: Deployment) -> dict:
    """The KafkaSink of the one topic a chain-starting deployment writes."""
    if len(d.spec.emits) != 1:
        raise ValueError(f"{d.name} takes no events, so its K_SINK is one topic's KafkaSink: it must emit one "
                         f"event type, not {list(d.spec.emits)}")
    return _ref(KAFKA_SINK_API, routing.topic_of(d.spec.emits[0]))


def ingress_types() -> list[str]:
    """Event types nothing in the cluster emits: they come in from Kafka (uploads)."""
    emitted = set(emitted_types())
    return [t for t in routing.TOPICS if t not in emitted]


# --------------------------------------------------------------------------- Services and their settings
def _env_list(d: Deployment) -> list[dict]:
    fixed = [{"name": k, "value": v} for k, v in {**deployment_env(d), **_identity_env(d)}.items()]
    config = [{"name": k, "valueFrom": {"configMapKeyRef": {"name": CONFIGMAP, "key": k}}}
              for k in sorted(config_keys(d.spec))]
    own = own_secret_keys(d.spec)  # its S3 account: a Secret of its own; the tokens: the shared one
    secret_of = {k: s3_secret_name(d.function) if k in own else SECRET for k in sorted(d.spec.secrets)}
    secrets = [{"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}} for k, name in secret_of.items()]
    return fixed + config + secrets


def _identity_env(d: Deployment) -> dict[str, str]:
    """Eventing's sender identity, both ways: the audience and senders POST / accepts (its
    Triggers'), and the token its SinkBinding mounts for K_SINK (flts.auth)."""
    env = {}
    if d.subscribes:
        env["EVENT_OIDC_AUDIENCE"] = oidc_audience(d)
        env["EVENT_OIDC_SENDERS"] = ",".join(trigger_identity(name) for name, _ in subscriptions(d))
    if d.spec.emits:
        env["EVENT_TOKEN_FILE"] = SINK_TOKEN_FILE
    return env


def _probes(spec: FunctionSpec) -> dict:
    # Readiness means "can take events": infer is ready without a model (its /predict answers
    # 503 until one arrives), else its first revision never turns Ready and the
    # flts.model-selected that would bring the model could never be delivered.
    return {
        "readinessProbe": {"httpGet": {"path": spec.readiness_path, "port": spec.port}, "periodSeconds": 2,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": spec.liveness_path, "port": spec.port}, "periodSeconds": 10,
                          "failureThreshold": 3, "initialDelaySeconds": 10},
    }


def _revision_annotations(d: Deployment) -> dict[str, str]:
    # Autoscaling belongs on the revision template (the webhook rejects it elsewhere). The
    # utilisation is explicit: Knative's default of 70 % would make a target of 1 an effective
    # 0.7, i.e. two instances per event in flight.
    capacity = d.spec.capacity
    return {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": str(capacity.concurrency),
        "autoscaling.knative.dev/target-utilization-percentage": str(capacity.target_utilization),
        "autoscaling.knative.dev/min-scale": str(capacity.min_scale),
        "autoscaling.knative.dev/max-scale": str(capacity.max_scale),
        # A cold start (image pull included) may take this long before the revision is failed.
        "serving.knative.dev/progress-deadline": f"{cold_start_seconds(d)}s",
    }


def knative_service(d: Deployment, options: RenderOptions) -> dict:
    spec, capacity = d.spec, d.spec.capacity
    labels = {"app.kubernetes.io/name": d.name, "app.kubernetes.io/component": d.function}
    if not spec.public:  # event-only functions get no external route
        labels["networking.knative.dev/visibility"] = "cluster-local"
    container = {
        "name": d.function,
        "image": image(d.function, options.registry),
        # The server itself on :8080, without the image's default of-watchdog in front.
        "command": ["python", "/app/index.py", "--listen", f"0.0.0.0:{spec.port}"],
        "ports": [{"name": "http1", "containerPort": spec.port}],
        "env": _env_list(d),
        "resources": {"requests": dict(capacity.requests), "limits": dict(capacity.limits)},
        **_probes(spec),
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": APP_UID, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return _object(SERVICE_API, _meta(d.name, labels), spec={"template": {
        "metadata": {"labels": {"app.kubernetes.io/name": d.name}, "annotations": _revision_annotations(d)},
        "spec": {"containerConcurrency": capacity.concurrency, "timeoutSeconds": capacity.timeout_seconds,
                 "containers": [container]},
    }})


def config_map() -> dict:
    return _object(("v1", "ConfigMap"), _meta(CONFIGMAP), data={k: CONFIG[k] for k in _config_keys()})


def _secret(name: str, keys: list[str], labels: dict[str, str] | None = None) -> dict:
    # Keys only: fill them in a copy that is never committed, or `kubectl create secret`.
    return _object(("v1", "Secret"), _meta(name, labels), type="Opaque", stringData={k: "" for k in keys})


def secret_template() -> dict:
    return _secret(SECRET, _shared_secret_keys())


def s3_secret_templates() -> list[dict]:
    """One Secret per function folder (the trainers share theirs: one function, one account)."""
    return [_secret(s3_secret_name(spec.name), sorted(own_secret_keys(spec)), {"app.kubernetes.io/component": spec.name})
            for spec in routing.SPECS if own_secret_keys(spec)]


# --------------------------------------------------------------------------- eventing
def _delivery(topic: str, timeout_seconds: int | None = None) -> dict:
    delivery: dict[str, Any] = {
        "retry": RETRIES,
        "backoffPolicy": "exponential",
        "backoffDelay": BACKOFF_DELAY,
        "deadLetterSink": _ref(KAFKA_SINK_API, routing.dlq_topic(topic)),
    }
    if timeout_seconds:  # per attempt (feature delivery-timeout, enabled by default)
        delivery["timeout"] = f"PT{timeout_seconds}S"
    return delivery


def broker() -> dict:
    return _object(BROKER_API, _meta(BROKER, annotations={"eventing.knative.dev/broker.class": "Kafka"}),
                   spec={"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka-broker-config",
                                    "namespace": "knative-eventing"}})


def _trigger(name: str, event_type: str, subscriber: dict, timeout_seconds: int | None = None) -> dict:
    """Events of one type from the Broker to `subscriber`, dead letters to dlq-<topic>."""
    return _object(TRIGGER_API, _event_meta(name, event_type), spec={
        "broker": BROKER,
        "filter": {"attributes": {"type": event_type}},
        "subscriber": subscriber,
        "delivery": _delivery(routing.topic_of(event_type), timeout_seconds),
    })


def subscriptions(d: Deployment) -> list[tuple[str, str]]:
    """(Trigger name, event type) of every event type the deployment takes."""
    return [(f"{d.name}-{routing.topic_of(t)}", t) for t in d.subscribes]


def oidc_audience(d: Deployment) -> str:
    """The audience its Triggers sign deliveries for (a Service is no Eventing Addressable: it has none of its own)."""
    return f"flts.dev/{d.name}"


def subscriber_triggers() -> list[dict]:
    # Each attempt may wait for a cold start and then the whole request (cluster.delivery_seconds).
    return [_trigger(name, t, {**_ref(SERVICE_API, d.name), "audience": oidc_audience(d)}, delivery_seconds(d))
            for d in routing.DEPLOYMENTS for name, t in subscriptions(d)]


# kmeta.ChildName (knative.dev/pkg) and auth.GetOIDCServiceAccountNameForResource (knative.dev/eventing),
# checked against the upstream code by tests/test_deploy_upstream.py.
_LONGEST, _MD5_HEX = 63, 32


def _child_name(parent: str, suffix: str) -> str:
    if len(parent) <= _LONGEST - len(suffix):
        return parent + suffix
    head = _LONGEST - _MD5_HEX
    if head - len(suffix) > 0:
        return parent[:head - len(suffix)] + hashlib.md5(parent.encode()).hexdigest() + suffix
    name = parent[:head] + hashlib.md5((parent + suffix).encode()).hexdigest()
    name += suffix[:max(0, _LONGEST - len(name))]
    return re.sub(r"[^a-zA-Z0-9]+$", "", name)


def oidc_identity(api: tuple[str, str], name: str) -> str:
    """The service account Eventing's sender identity gives an object (its tokens' subject)."""
    return _child_name(name, f"-oidc-{api[0].split('/')[0]}-{api[1]}").lower()


def trigger_identity(trigger: str) -> str:
    """The service account a Trigger's deliveries are signed as."""
    return oidc_identity(TRIGGER_API, trigger)


def broker_audience(namespace: str) -> str:
    """The audience the Broker announces (status.address.audience) and its senders' tokens are for."""
    return f"{BROKER_API[0].split('/')[0]}/{BROKER_API[1]}/{namespace}/{BROKER}".lower()


def record_triggers() -> list[dict]:
    """Copy each emitted event into its topic of the contract (a KafkaSink per topic)."""
    return [_trigger(f"record-{routing.topic_of(t)}", t, _ref(KAFKA_SINK_API, routing.topic_of(t)))
            for t in emitted_types()]


def kafka_sink(topic: str, replication: int) -> dict:
    return _object(KAFKA_SINK_API, _meta(topic), spec={
        "topic": topic,
        "bootstrapServers": [KAFKA_BOOTSTRAP],
        "numPartitions": KAFKA_PARTITIONS,
        "replicationFactor": replication,
        "contentMode": "binary",  # what the local dispatcher reads and writes
    })


def kafka_sinks(replication: int) -> list[dict]:
    records = [routing.topic_of(t) for t in emitted_types()]
    records += [routing.topic_of(t) for d in emitters() if starts_chains(d) for t in d.spec.emits if
                routing.topic_of(t) not in records]
    dlqs = [routing.dlq_topic(t) for t in routing.TOPICS.values()]
    return [kafka_sink(topic, replication) for topic in records + dlqs]


def _ingress_source(event_type: str) -> dict:
    topic = routing.topic_of(event_type)
    return _object(KAFKA_SOURCE_API, _event_meta(f"ingress-{topic}", event_type), spec={
        "consumerGroup": f"flts-ingress-{topic}",
        "bootstrapServers": [KAFKA_BOOTSTRAP],
        "topics": [topic],
        "initialOffset": "earliest",
        "sink": _ref(BROKER_API, BROKER),
        "delivery": _delivery(topic),
    })


def ingress_sources() -> list[dict]:
    return [_ingress_source(t) for t in ingress_types()]


def sink_bindings() -> list[dict]:
    """K_SINK = the Broker for every Service that emits events (a chain's start: its topic's KafkaSink)."""
    return [_object(SINK_BINDING_API, _meta(f"{d.name}-emits"), spec={
        "subject": _ref(SERVICE_API, d.name)["ref"],
        "sink": _chain_start_sink(d) if starts_chains(d) else _ref(BROKER_API, BROKER),
    }) for d in emitters()]


def broker_senders() -> list[tuple[tuple[str, str], str]]:
    """(api, name) of what posts to the Broker: the functions' SinkBindings and the ingress KafkaSources."""
    bindings = [(SINK_BINDING_API, b["metadata"]["name"]) for b in sink_bindings()
                if b["spec"]["sink"]["ref"]["kind"] == BROKER_API[1]]
    return bindings + [(KAFKA_SOURCE_API, s["metadata"]["name"]) for s in ingress_sources()]


def broker_policy() -> dict:
    """Under sender identity, only these may post to the Broker (else any service account of the namespace)."""
    return _object(EVENT_POLICY_API, _meta(f"{BROKER}-senders"), spec={
        "to": [{"ref": {"apiVersion": BROKER_API[0], "kind": BROKER_API[1], "name": BROKER}}],
        "from": [{"ref": {"apiVersion": api[0], "kind": api[1], "name": name}} for api, name in broker_senders()],
    })


def knative_files(options: RenderOptions = DEFAULTS) -> dict[str, list[dict]]:
    """Repository path → the objects in that file."""
    return {
        "eventing/knative/broker.yaml": [broker(), broker_policy()],
        "eventing/knative/triggers.yaml": subscriber_triggers() + record_triggers(),
        "eventing/knative/kafka-sinks.yaml": kafka_sinks(options.kafka_replication),
        "eventing/knative/kafka-sources.yaml": ingress_sources(),
        "eventing/knative/sink-bindings.yaml": sink_bindings(),
        "deploy/knative/config.yaml": [config_map()],
        "deploy/knative/services.yaml": [knative_service(d, options) for d in routing.DEPLOYMENTS],
        # Not applied with the folder (`kubectl apply -f deploy/knative/` is not recursive).
        "deploy/knative/templates/secret.yaml": [secret_template(), *s3_secret_templates()],
    }
