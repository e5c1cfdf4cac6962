"""Run as the manifests say: every rendered Knative Service started as a local process exactly as
its manifest describes (command, environment, port, probes), and the events its Triggers would
deliver sent the way their delivery specs say (flts/dev/deploy/localrun.py).

What a fresh cluster does at first contact: `kubectl apply` starts one instance of every
revision, each must turn Ready, and the first events must reach them. The first
flts.model-selected must reach an infer that has no model yet.
"""
from __future__ import annotations

import copy

import httpx
import pytest

from flts import events, routing
from flts.dev import deploy
from flts.dev.demo import upload_dataset
from flts.dev.deploy.knative import broker_audience
from flts.dev.deploy.localrun import LocalCluster, NotReady
from flts.dev.forecast import last_rows, request_body
from flts.dev.testing import LTE_FEATURES, persistence_onnx, promote
from flts.storage import FileStore

SECRETS = {"S3_ACCESS_KEY": "local", "S3_SECRET_KEY": "local", "SCALE_WORKERS_TOKEN": "local"}
TRAINERS = [d.name for d in routing.DEPLOYMENTS if d.function == "train"]


def rendered_objects() -> list[dict]:
    return [o for objects in deploy.knative_files().values() for o in objects]


def stand_ins(tmp) -> dict[str, str]:
    """Local stand-ins for the ConfigMap's cluster endpoints (an empty S3_ENDPOINT: the file store)."""
    return {"S3_ENDPOINT": "", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "FLTS_OBJECT_DIR": str(tmp / "objects"), "HOME": str(tmp / "home")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("localrun")


@pytest.fixture(scope="module")
def store(workdir) -> FileStore:
    return FileStore(workdir / "objects")


@pytest.fixture(scope="module")
def cluster(workdir, store, kube):
    """Every Service of the render, started at once as `kubectl apply` starts them, none with a model,
    with Eventing's sender identity on (tokens signed by a real kube-apiserver)."""
    with LocalCluster(rendered_objects(), workdir, stand_ins=stand_ins(workdir), secrets=SECRETS,
                      identity=kube) as running:
        running.start_all(sorted(running.services))
        yield running


def delivered(cluster: LocalCluster, trigger: str) -> list[int | None]:
    return [a.status for a in cluster.attempts(trigger)]


# --------------------------------------------------------------------------- first contact
def test_every_service_turns_ready_and_stays_alive_as_its_manifest_says(cluster):
    assert sorted(cluster.ready_seconds) == sorted(d.name for d in routing.DEPLOYMENTS)
    for name, seconds in cluster.ready_seconds.items():
        assert seconds < cluster.containers[name].progress_deadline, name
        assert cluster.alive(name), f"{name}: liveness probe failed"
        assert cluster.containers[name].env["FLTS_FUNCTION"] == routing.deployment(name).function


def test_a_fresh_infer_is_ready_without_a_model_and_predict_says_why_it_cannot_answer(cluster):
    url = cluster.url("infer")
    ready = httpx.get(url + "/readyz").json()
    assert ready["status"] == "ready" and ready["model"] is None
    answer = httpx.post(url + "/predict", json={})
    assert answer.status_code == 503 and "no model is loaded yet" in answer.json()["error"]


def test_the_first_model_selected_reaches_the_fresh_infer_and_it_serves(cluster, store, lte_dir):
    pointer = promote(store, persistence_onnx(10, len(LTE_FEATURES), 3, LTE_FEATURES.index("down")))
    cluster.publish(events.make_event(events.MODEL_SELECTED, "eval", pointer))
    cluster.wait_for(lambda: delivered(cluster, "infer-model-selected"), 30, what="the delivery to infer")
    assert delivered(cluster, "infer-model-selected") == [202]
    assert [e["type"] for e in cluster.broker.recorded["model-selected"]] == [events.MODEL_SELECTED]
    window = request_body(last_rows(lte_dir / "PobleSec_test.csv", 12), "time")
    answer = httpx.post(cluster.url("infer") + "/predict", json=window)
    assert answer.status_code == 200 and answer.json()["run_id"] == pointer.run_id


def test_an_upload_flows_through_preprocess_to_every_trainer_and_on_to_eval(cluster, store, lte_dir):
    ready = upload_dataset(store, "PobleSec", lte_dir)
    cluster.publish(events.make_event(events.DATASET_READY, "upload", ready))  # as the ingress KafkaSource
    cluster.wait_for(lambda: delivered(cluster, "preprocess-dataset-ready"), 120, what="the delivery to preprocess")
    assert delivered(cluster, "preprocess-dataset-ready") == [202]  # it answers once its output is in the Broker
    assert [e.data["identifier"] for e in cluster.received(events.TRAINING_DATA)] == ["PobleSec"]

    def running() -> set[str]:  # the trainers' first event, sent through K_SINK before training starts
        return {e.data["model_type"] for e in cluster.received(events.MODEL_TRAINING) if e.data["status"] == "RUNNING"}

    cluster.wait_for(lambda: len(running()) == len(TRAINERS), 120, what="RUNNING from every trainer")
    for name in TRAINERS:  # a whole training run is not this test's business
        cluster.stop(name)
    assert running() == {routing.deployment(n).env["MODEL_TYPE"] for n in TRAINERS}
    cluster.wait_for(lambda: len(delivered(cluster, "eval-model-training")) >= len(TRAINERS), 60,
                     what="the deliveries to eval")
    assert set(delivered(cluster, "eval-model-training")) == {202}  # RUNNING: nothing to settle yet
    assert {"training-data", "model-training"} <= set(cluster.broker.recorded)


def test_with_sender_identity_no_one_else_reaches_a_function_or_the_broker(cluster, store):
    """The forged notice (issue 12, H1) from a pod of the cluster: refused by infer and by the Broker."""
    from cloudevents.conversion import to_binary

    pointer = promote(store, persistence_onnx(10, len(LTE_FEATURES), 3, 0))
    headers, body = to_binary(events.make_event(events.MODEL_SELECTED, "/anyone", pointer))
    api = cluster.identity.api
    for token in (None, api.token("flts", "default", "flts.dev/infer")):  # none, or a pod's own account's
        extra = {"Authorization": f"Bearer {token}"} if token else {}
        refused = httpx.post(cluster.url("infer") + "/", headers={**headers, **extra}, content=body)
        assert refused.status_code == 401, refused.text
    for token in (None, api.token("flts", "default", broker_audience("flts"))):  # not in its EventPolicy
        extra = {"Authorization": f"Bearer {token}"} if token else {}
        assert httpx.post(cluster.broker_url, headers={**headers, **extra}, content=body).status_code == 401
    assert not cluster.received(events.MODEL_SELECTED, source="/anyone")


# --------------------------------------------------------------------------- planted error
def test_a_readiness_probe_that_needs_a_model_is_caught(tmp_path):
    """infer's /v2/health/ready answers 503 until a model is loaded: as a readiness probe, the
    first revision would never turn Ready, and the model-selected event could never reach it."""
    objects = copy.deepcopy(rendered_objects())
    infer = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "infer")
    infer["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/v2/health/ready"
    with LocalCluster(objects, tmp_path, stand_ins=stand_ins(tmp_path), secrets=SECRETS) as cluster:
        cluster.start("infer")
        with pytest.raises(NotReady, match=r"GET /v2/health/ready answered 503 .*Initial scale was never achieved"):
            cluster.wait_ready("infer", within=10)
