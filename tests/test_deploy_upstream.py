"""The rendered manifests checked by upstream code (flts/dev/deploy/upstream.py):

- Knative's own defaulting and validation (deploy/checks/knative: SetDefaults + Validate of
  knative.dev/serving, eventing and eventing-kafka-broker at the CRDs' versions);
- a real kube-apiserver + etcd with the CRDs installed: `kubectl apply --dry-run=server
  --validate=strict` on every object.

infra/install.sh builds both binaries; a missing one fails these tests (it never skips them).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from flts.dev import deploy
from flts.dev.deploy import RenderOptions
from flts.dev.deploy.knative import oidc_identity, trigger_identity
from flts.dev.deploy.upstream import KNATIVE_CHECK, KUBE_APISERVER, KubeAPIServer, MissingTool, knative_versions, tool
from flts.dev.deploy.upstream import knative_webhook_errors as webhook_errors
from flts.dev.deploy.upstream import knative_webhook_results as webhook_results
from flts.dev.deploy.validate import CRD_FILES, KNATIVE_SCHEMA_DIR

REPO = Path(__file__).resolve().parent.parent
AS = "autoscaling.knative.dev/"


@pytest.fixture(scope="module", autouse=True)
def installed():
    """The binaries infra/install.sh provides: their absence is a failure, never a skip."""
    try:
        return {name: tool(name) for name in (KNATIVE_CHECK, KUBE_APISERVER, "etcd")}
    except MissingTool as exc:
        pytest.fail(str(exc))


def rendered(options: RenderOptions = deploy.DEFAULTS) -> list[dict]:
    return [o for objects in deploy.knative_files(options).values() for o in objects]


def one(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def mutated(kind: str, name: str, mutate) -> dict:
    obj = copy.deepcopy(one(rendered(), kind, name))
    mutate(obj)
    return obj


def template(service: dict) -> dict:
    return service["spec"]["template"]


# --------------------------------------------------------------------------- Knative's webhooks
def test_knative_checker_is_built_from_the_versions_of_the_crds():
    readme = (REPO / "deploy/schemas/README.md").read_text()
    versions = knative_versions()
    for module in ("knative.dev/serving", "knative.dev/eventing", "knative.dev/eventing-kafka-broker"):
        assert re.search(rf"\| `{re.escape(module)}` \| {re.escape(versions[module])} \|", readme), (module, versions)


@pytest.mark.parametrize("options", [deploy.DEFAULTS, RenderOptions(kafka_replication=1)],
                         ids=["defaults", "single-broker-kafka"])
def test_knative_webhooks_accept_every_rendered_object(options):
    results = webhook_results(rendered(options))
    assert [r for r in results if r["status"] == "invalid" or r.get("warnings")] == []
    checked = {r["kind"] for r in results if r["status"] == "valid"}
    assert checked == {"Service", "Broker", "Trigger", "KafkaSink", "KafkaSource", "SinkBinding", "EventPolicy"}
    assert {r["kind"] for r in results if r["status"] == "not-knative"} == {"ConfigMap", "Secret"}
    broker = next(r for r in results if r["kind"] == "Broker")
    assert broker["webhooks"] == ["eventing", "eventing-kafka"]  # a Kafka-class Broker passes both


@pytest.mark.parametrize("obj, message", [
    (mutated("Service", "infer", lambda s: template(s)["spec"].update(containerConcurency=4)),
     'unknown field "containerConcurency"'),
    (mutated("Service", "infer", lambda s: template(s)["metadata"]["annotations"].update(
        {AS + "min-scale": "5", AS + "max-scale": "2"})), "max-scale=2 is less than min-scale=5"),
    (mutated("Service", "train-gru", lambda s: template(s)["spec"].update(timeoutSeconds=900)),
     "expected 0 <= 900 <= 600: spec.template.spec.timeoutSeconds"),
    (mutated("Service", "train-gru", lambda s: template(s)["metadata"]["annotations"].update(
        {AS + "target-utilization-percentage": "170"})), "target-utilization-percentage"),
    (mutated("Service", "infer", lambda s: template(s)["metadata"]["annotations"].update(
        {AS + "initial-scale": "0"})), "initial-scale=0 not allowed by cluster"),
    (mutated("Trigger", "eval-model-training", lambda t: t["spec"]["delivery"].update(timeout="600s")),
     "invalid value: 600s: spec.delivery.timeout"),
    (mutated("KafkaSink", "dlq-training-data", lambda k: k["spec"].update(replicationFactor=0)),
     "invalid value: 0: spec.replicationFactor"),
    (mutated("Broker", "flts", lambda b: b["spec"]["config"].update(kind="Secret")), "Expected ConfigMap"),
    (mutated("EventPolicy", "flts-senders", lambda p: p["spec"]["from"][0].update(sub="anyone")),
     "expected exactly one, got both: spec.from[0].ref, spec.from[0].sub"),
])
def test_knative_webhooks_refuse_a_planted_error(obj, message):
    errors = webhook_errors([obj])
    assert any(message in e for e in errors), errors


def env_of(service: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in template(service)["spec"]["containers"][0]["env"]}


def test_each_function_accepts_exactly_the_senders_eventing_signs_its_triggers_as():
    """Sender identity (flts.auth): EVENT_OIDC_SENDERS are the service accounts Knative's own code
    names for the Service's Triggers, and EVENT_OIDC_AUDIENCE is what those Triggers sign for."""
    objects = rendered()
    identity = {r["name"]: r["oidcIdentity"] for r in webhook_results(objects) if r["kind"] == "Trigger"}
    triggers = [o for o in objects if o["kind"] == "Trigger" and o["spec"]["subscriber"]["ref"]["kind"] == "Service"]
    services = [o for o in objects if o["kind"] == "Service" and any(
        t["spec"]["subscriber"]["ref"]["name"] == o["metadata"]["name"] for t in triggers)]
    assert {s["metadata"]["name"] for s in services} >= {"preprocess", "train-gru", "eval", "infer"}
    for service in services:
        name, env = service["metadata"]["name"], env_of(service)
        own = [t for t in triggers if t["spec"]["subscriber"]["ref"]["name"] == name]
        assert env["EVENT_OIDC_SENDERS"].split(",") == [identity[t["metadata"]["name"]] for t in own], name
        assert {t["spec"]["subscriber"]["audience"] for t in own} == {env["EVENT_OIDC_AUDIENCE"]}, name


def test_the_broker_admits_exactly_the_senders_that_post_to_it():
    """Its EventPolicy names the SinkBindings and KafkaSources whose sink is the Broker; the local
    run's Broker admits their service accounts, named as Knative's own code names them."""
    objects = rendered()
    [policy] = [o for o in objects if o["kind"] == "EventPolicy"]
    posting = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in ("SinkBinding", "KafkaSource")
               and o["spec"]["sink"]["ref"]["kind"] == "Broker"}
    assert {(f["ref"]["kind"], f["ref"]["name"]) for f in policy["spec"]["from"]} == posting
    assert len(posting) == len(deploy.knative.broker_senders()) >= 2
    identity = {(r["kind"], r["name"]): r["oidcIdentity"] for r in webhook_results(objects) if r.get("oidcIdentity")}
    assert [oidc_identity(api, name) for api, name in deploy.knative.broker_senders()] == [
        identity[(api[1], name)] for api, name in deploy.knative.broker_senders()]


@pytest.mark.parametrize("name", ["infer-model-selected", "a-trigger-name-of-thirty-chars", "x" * 70])
def test_the_sender_names_follow_knatives_own_naming(name):
    """kmeta.ChildName as Triggers use it: short enough to keep, just too long (hashed, the suffix cut),
    longer than the hash leaves room for (the name cut too)."""
    trigger = mutated("Trigger", "infer-model-selected", lambda t: t["metadata"].update(name=name))
    [result] = webhook_results([trigger])
    assert trigger_identity(name) == result["oidcIdentity"]


# --------------------------------------------------------------------------- kube-apiserver
@pytest.fixture(scope="module")
def apiserver(installed, tmp_path_factory):
    crds = [KNATIVE_SCHEMA_DIR / name for name in CRD_FILES]
    with KubeAPIServer(crds, workdir=tmp_path_factory.mktemp("apiserver")).running() as api:
        api.namespace("flts")
        api.namespace("openfaas")  # the dispatcher's
        yield api


def test_api_server_accepts_every_rendered_object_strictly(apiserver):
    dispatcher = deploy.load_yaml_objects([REPO / "deploy/openfaas/dispatcher.yaml"])
    objects = rendered() + dispatcher
    assert [p for o in objects for p in apiserver.dry_run(o)] == []
    assert {o["kind"] for o in objects} >= {"Service", "ConfigMap", "Secret", "Broker", "Trigger", "KafkaSink",
                                            "KafkaSource", "SinkBinding", "Deployment"}


def test_the_committed_files_are_what_the_api_server_accepted(apiserver):
    committed = deploy.load_yaml_objects(REPO / p for p in deploy.knative_files())
    assert committed == rendered()


@pytest.mark.parametrize("obj, message", [
    (mutated("Service", "infer", lambda s: template(s)["spec"].update(containerConcurency=4)),
     'strict decoding error: unknown field "spec.template.spec.containerConcurency"'),
    (mutated("Trigger", "eval-model-training", lambda t: t["spec"]["delivery"].update(retry="5")),
     "spec.delivery.retry: Invalid value"),
    (mutated("KafkaSource", "ingress-dataset-ready", lambda k: k["spec"].pop("topics")),
     "spec.topics: Required value"),
    (mutated("ConfigMap", deploy.CONFIGMAP, lambda c: c["data"].update(EPOCHS=300)),
     "cannot unmarshal number into Go struct field ConfigMap.data of type string"),
    (mutated("Service", "infer", lambda s: s["metadata"].update(name="Infer_Service")), "Invalid value"),
])
def test_api_server_refuses_a_planted_error(apiserver, obj, message):
    problems = apiserver.dry_run(obj)
    assert any(message in p for p in problems), problems
