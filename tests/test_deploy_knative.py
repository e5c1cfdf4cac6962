"""Knative files: generated, committed, valid against the upstream CRDs and the webhooks' rules."""
from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import pytest
import yaml

from flts import forecasters, routing
from flts.dev import deploy
from flts.spec import Scaling

REPO = Path(__file__).resolve().parent.parent
KNATIVE_FILES = sorted(deploy.knative_files())
UTILIZATION = "autoscaling.knative.dev/target-utilization-percentage"


def committed_objects() -> list[dict]:
    return deploy.load_yaml_objects(REPO / p for p in KNATIVE_FILES)


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return committed_objects()


@pytest.fixture(scope="module")
def schemas():
    return deploy.crd_schemas()


# --------------------------------------------------------------------------- generated == committed
@pytest.mark.parametrize("target", deploy.TARGETS)
def test_committed_files_equal_what_the_generator_renders(target):
    stale = deploy.drift(target)
    assert not stale, f"run `flts deploy render --target {target}`; stale: {stale}"


def test_drift_is_detected(tmp_path):
    deploy.write("knative", repo=tmp_path)
    assert deploy.drift("knative", repo=tmp_path) == []
    services = tmp_path / "deploy/knative/services.yaml"
    services.write_text(services.read_text().replace("containerConcurrency: 1", "containerConcurrency: 2", 1))
    assert deploy.drift("knative", repo=tmp_path) == ["deploy/knative/services.yaml"]


def test_render_check_command_passes_on_the_committed_tree(capsys):
    from flts.cli import main

    assert main(["deploy", "render", "--check"]) == 0
    assert "up to date and valid" in capsys.readouterr().out


# --------------------------------------------------------------------------- upstream schemas
def test_crd_copies_are_unchanged_from_upstream():
    readme = (REPO / "deploy/schemas/README.md").read_text()
    recorded = dict(re.findall(r"\| (knative/[\w.-]+\.yaml) \|.*\| ([0-9a-f]{64}) \|", readme))
    assert sorted(recorded) == sorted(f"knative/{name}" for name in deploy.CRD_FILES)
    for path, digest in recorded.items():
        actual = hashlib.sha256((REPO / "deploy/schemas" / path).read_bytes()).hexdigest()
        assert actual == digest, f"{path} differs from the recorded upstream copy"


def test_every_committed_knative_object_validates(objects, schemas):
    assert {o["kind"] for o in objects} == {"Service", "ConfigMap", "Secret", "Broker", "Trigger",
                                             "KafkaSink", "KafkaSource", "SinkBinding", "EventPolicy"}
    errors = [e for o in objects for e in deploy.schema_errors(o, schemas)]
    assert errors == []
    assert deploy.semantic_errors(objects) == []


def test_every_api_version_has_an_upstream_schema(objects, schemas):
    for o in objects:
        key = (o["apiVersion"], o["kind"])
        assert key in schemas or key in deploy.CORE_SCHEMAS, key


def _service(objects, name="infer") -> dict:
    return copy.deepcopy(by_kind(objects, "Service")[name])


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["spec"]["template"]["spec"].update(containerConcurency=4), "containerConcurency"),
    (lambda s: s["spec"]["template"]["spec"].update(timeoutSeconds="600"), "is not of type 'integer'"),
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="one"),
     "does not match"),
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(pth="/"),
     "pth"),
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "valu": "1"}), "valu"),
    (lambda s: s["metadata"].update(name="Infer_Service"), "does not match"),
    (lambda s: s["metadata"]["labels"].update({"flts.dev/event-type": "flts/model selected"}), "does not match"),
    (lambda s: s["spec"]["template"]["metadata"]["annotations"].update({"x": 1}), "is not of type 'string'"),
])
def test_schema_check_rejects_what_the_api_server_would_drop_or_refuse(objects, schemas, mutate, message):
    service = _service(objects)
    assert deploy.schema_errors(service, schemas) == []
    mutate(service)
    errors = deploy.schema_errors(service, schemas)
    assert errors and any(message in e for e in errors), errors


def test_schema_check_rejects_unknown_api_version(objects, schemas):
    service = _service(objects)
    service["apiVersion"] = "serving.knative.dev/v2"
    assert "no schema" in deploy.schema_errors(service, schemas)[0]


def test_schema_check_rejects_a_value_in_the_secret_template(objects, schemas):
    secret = copy.deepcopy(by_kind(objects, "Secret")[deploy.SECRET])
    assert deploy.schema_errors(secret, schemas) == []
    secret["stringData"]["S3_SECRET_KEY"] = "hunter2"
    assert deploy.schema_errors(secret, schemas)


def _semantic_errors_after(objects, kind, name, mutate) -> list[str]:
    objs = copy.deepcopy(objects)
    mutate(by_kind(objs, kind)[name])
    return deploy.semantic_errors(objs)


@pytest.mark.parametrize("kind, name, mutate, message", [
    ("Service", "infer", lambda s: s["metadata"].setdefault("annotations", {}).update(
        {"autoscaling.knative.dev/min-scale": "1"}), "must sit under spec.template.metadata"),
    ("Service", "infer", lambda s: s["spec"]["template"]["metadata"]["annotations"].update(
        {"autoscaling.knative.dev/min-scale": "5", "autoscaling.knative.dev/max-scale": "2"}), "min-scale 5"),
    ("Service", "train-gru", lambda s: s["spec"]["template"]["spec"].update(timeoutSeconds=900), "timeoutSeconds 900"),
    ("Service", "infer", lambda s: s["spec"]["template"]["metadata"]["annotations"].update(
        {"autoscaling.knative.dev/target": "500"}), "exceeds containerConcurrency"),
    ("Service", "infer", lambda s: s["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "PORT", "value": "9000"}), "reserved by Knative"),
    ("Service", "infer", lambda s: s["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(
        port=9000), "must be the container port"),
    ("KafkaSource", "ingress-dataset-ready", lambda s: s["spec"].pop("sink"), "needs a ref or uri"),
    ("KafkaSource", "ingress-dataset-ready", lambda s: s["spec"].update(bootstrapServers=[]), "bootstrapServers"),
    ("KafkaSource", "ingress-dataset-ready", lambda s: s["spec"].update(topics=[]), "topics"),
    ("Trigger", "eval-model-training", lambda t: t["spec"]["subscriber"]["ref"].update(name="evaluate"),
     "'evaluate', which is not defined"),
    ("Trigger", "eval-model-training", lambda t: t["spec"]["delivery"].pop("deadLetterSink"), "no deadLetterSink"),
    ("Trigger", "eval-model-training", lambda t: t["spec"]["delivery"].update(backoffDelay="2s"),
     "not an ISO-8601 duration"),
    ("Trigger", "eval-model-training", lambda t: t["spec"]["delivery"].update(backoffPolicy="fibonacci"),
     "backoffPolicy"),
    ("Trigger", "eval-model-training", lambda t: t["spec"].update(broker="default"), "broker 'default'"),
    ("SinkBinding", "eval-emits", lambda b: b["spec"]["subject"].update(name="evaluate"), "is not defined"),
])
def test_semantic_rules_catch_what_the_webhooks_reject(objects, kind, name, mutate, message):
    errors = _semantic_errors_after(objects, kind, name, mutate)
    assert any(message in e for e in errors), errors


# --------------------------------------------------------------------------- what the Services say
def _container(service: dict) -> dict:
    return service["spec"]["template"]["spec"]["containers"][0]


def _env(service: dict) -> dict[str, dict]:
    return {e["name"]: e for e in _container(service)["env"]}


def test_one_service_per_deployment_and_one_trainer_per_model_type(objects):
    services = by_kind(objects, "Service")
    assert sorted(services) == sorted(d.name for d in routing.DEPLOYMENTS)
    trainers = {n: s for n, s in services.items() if s["metadata"]["labels"]["app.kubernetes.io/component"] == "train"}
    assert sorted(_env(s)["MODEL_TYPE"]["value"] for s in trainers.values()) == sorted(forecasters.names())


def _annotations(service: dict) -> dict[str, str]:
    return service["spec"]["template"]["metadata"]["annotations"]


def test_inference_service_scales_on_its_inflight_limit(objects):
    infer = by_kind(objects, "Service")["infer"]
    template = infer["spec"]["template"]
    ann = _annotations(infer)
    max_inflight = int(_env(infer)["MAX_INFLIGHT"]["value"])
    assert template["spec"]["containerConcurrency"] == max_inflight
    assert ann["autoscaling.knative.dev/min-scale"] == "0"
    assert int(ann["autoscaling.knative.dev/max-scale"]) >= 1
    # Scale out at 75 % of the admission limit: target × utilisation, as the autoscaler computes it.
    effective = int(ann["autoscaling.knative.dev/target"]) * int(ann[UTILIZATION]) / 100
    assert effective == routing.function_spec("infer").capacity.effective_target == max_inflight * 0.75
    assert ann["autoscaling.knative.dev/metric"] == "concurrency"
    container = _container(infer)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]) == {"requests", "limits"}
    assert "networking.knative.dev/visibility" not in infer["metadata"]["labels"]  # /predict is public


def test_an_event_worker_gets_one_instance_per_event_in_flight(objects):
    for d in routing.DEPLOYMENTS:
        if d.spec.scaling is Scaling.EVENT_WORKER:
            ann = _annotations(by_kind(objects, "Service")[d.name])
            assert (ann["autoscaling.knative.dev/target"], ann[UTILIZATION]) == ("1", "100"), d.name


def test_every_trigger_waits_for_a_cold_start_plus_the_whole_request(objects):
    """The per-attempt timeout outlasts the progress deadline (a cold start, the image pulled) plus
    timeoutSeconds: shorter, the Broker retries while the first attempt runs, onto a second pod."""
    services, triggers = by_kind(objects, "Service"), by_kind(objects, "Trigger")
    for d in routing.DEPLOYMENTS:
        service = services[d.name]
        timeout = service["spec"]["template"]["spec"]["timeoutSeconds"]
        deadline = _annotations(service)["serving.knative.dev/progress-deadline"]
        assert deadline == f"{deploy.cluster.cold_start_seconds(d)}s"
        for event_type in d.subscribes:
            delivery = triggers[f"{d.name}-{routing.topic_of(event_type)}"]["spec"]["delivery"]
            assert delivery["timeout"] == f"PT{int(deadline[:-1]) + timeout}S"
    assert deploy.delivery_timeout_errors(objects) == []


def test_a_delivery_timeout_shorter_than_cold_start_plus_training_is_caught(objects):
    objs = copy.deepcopy(objects)
    trigger = by_kind(objs, "Trigger")["train-gru-training-data"]
    trigger["spec"]["delivery"]["timeout"] = "PT600S"  # = timeoutSeconds: the cold start is not covered
    errors = deploy.semantic_errors(objs)
    assert len(errors) == 1 and "delivery timeout PT600S (600 s) is shorter than Service 'train-gru'" in errors[0]


def test_an_effective_target_below_one_is_caught(objects):
    """Knative's default utilisation (70 %) turns a target of 1 into 0.7: two pods per event."""
    objs = copy.deepcopy(objects)
    del _annotations(by_kind(objs, "Service")["train-gru"])[UTILIZATION]
    errors = deploy.semantic_errors(objs)
    assert any("effective autoscaling target 0.7" in e and "asks for 2 instances" in e for e in errors), errors


@pytest.mark.parametrize("replication", [3, 1])
def test_kafka_sinks_replicate_their_topics_as_rendered(replication):
    options = deploy.RenderOptions(kafka_replication=replication)
    sinks = [o for o in deploy.knative_files(options)["eventing/knative/kafka-sinks.yaml"]]
    assert sinks and {s["spec"]["replicationFactor"] for s in sinks} == {replication}


def test_the_committed_kafka_sinks_are_durable_and_a_zero_replication_is_refused(objects):
    assert {s["spec"]["replicationFactor"] for s in by_kind(objects, "KafkaSink").values()} == {3}
    with pytest.raises(ValueError, match="--kafka-replication must be at least 1"):
        deploy.RenderOptions(kafka_replication=0)


def test_event_functions_are_cluster_local_and_every_service_runs_as_non_root(objects):
    for name, service in by_kind(objects, "Service").items():
        security = _container(service)["securityContext"]
        assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
        if name not in ("infer", "gateway"):  # the two public ones: /predict, and uploads and the status page
            assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_delivery_dead_letters_into_the_dlq_topic_of_the_event_type(objects):
    sinks = by_kind(objects, "KafkaSink")
    for trigger in by_kind(objects, "Trigger").values():
        event_type = trigger["spec"]["filter"]["attributes"]["type"]
        delivery = trigger["spec"]["delivery"]
        assert delivery["backoffPolicy"] == "exponential" and delivery["retry"] >= 1
        dlq = sinks[delivery["deadLetterSink"]["ref"]["name"]]
        assert dlq["spec"]["topic"] == routing.dlq_topic(routing.topic_of(event_type))


def test_broker_is_kafka_class_and_every_emitter_has_k_sink_to_it(objects):
    broker = by_kind(objects, "Broker")[deploy.BROKER]
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    bound = {b["spec"]["subject"]["name"]: b["spec"]["sink"]["ref"] for b in by_kind(objects, "SinkBinding").values()}
    emitters = {d.name for d in routing.DEPLOYMENTS if d.spec.emits}
    assert set(bound) == emitters
    broker = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": deploy.BROKER}
    assert all(ref == broker for name, ref in bound.items() if name != "gateway")
    # the gateway starts chains: its dataset-ready goes to the topic, and the KafkaSource brings it in
    assert bound["gateway"] == {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink",
                                "name": "dataset-ready"}
    assert by_kind(objects, "KafkaSink")["dataset-ready"]["spec"]["topic"] == "dataset-ready"


def test_no_event_can_loop_between_ingress_and_record_topics(objects):
    ingress_topics = {t for s in by_kind(objects, "KafkaSource").values() for t in s["spec"]["topics"]}
    sinks = by_kind(objects, "KafkaSink")
    record_topics = {sinks[t["spec"]["subscriber"]["ref"]["name"]]["spec"]["topic"]
                     for t in by_kind(objects, "Trigger").values() if t["spec"]["subscriber"]["ref"]["kind"] == "KafkaSink"}
    assert ingress_topics == {"dataset-ready"}
    assert ingress_topics.isdisjoint(record_topics)
    assert record_topics | ingress_topics == set(routing.TOPICS.values())


def test_no_credentials_in_committed_files(objects):
    secret_like = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.IGNORECASE)
    for service in by_kind(objects, "Service").values():
        for name, entry in _env(service).items():
            if secret_like.search(name) and not name.endswith("_FILE"):  # EVENT_TOKEN_FILE: where a token is mounted
                assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name} must come from the Secret"
    assert all(v == "" for secret in by_kind(objects, "Secret").values() for v in secret["stringData"].values())
    assert not any(secret_like.search(k) for k in by_kind(objects, "ConfigMap")[deploy.CONFIGMAP]["data"])
    stack = yaml.safe_load((REPO / "stack.yml").read_text())
    for name, fn in stack["functions"].items():
        leaked = [k for k in fn.get("environment", {}) if secret_like.search(k)]
        assert not leaked, f"{name}: credentials {leaked} belong in OpenFaaS secrets"
