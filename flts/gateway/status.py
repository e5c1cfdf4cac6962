"""A pipeline's status, read from what the pipeline already writes (no state of the gateway's own
beyond the upload's record):

- the upload:      `<identifier>/uploads/<id>.json` in the raw-data bucket (the newest one)
- preprocess:      the `.meta.json` in processed-data whose source checksum is the upload's
- each trainer:    the newest MLflow run of its MODEL_TYPE tagged with that config hash
- eval and served: `<identifier>/current.json` in the promotion bucket (infer follows that pointer)
                   naming that config hash, and its serving artifact present
- dead letters:    the dlq-* topics' letters whose event is the identifier's
"""
from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass

import httpx
import orjson

from flts import routing
from flts.gateway import uploads
from flts.gateway.settings import GatewaySettings
from flts.logs import log
from flts.promotion import current_key
from flts.storage import ObjectNotFound, ObjectStore, StorageError, get_json

PLOT = "plots/forecast_vs_actual.png"  # eval logs it to the promoted run (flts.eval.handler.log_forecast_plot)
DLQ_TAIL = 500  # newest letters read per dead-letter partition
DLQ_READ_SECONDS = 3.0


def trainers() -> list[tuple[str, str]]:
    """(deployment, MODEL_TYPE) of every trainer in the routing table."""
    return [(d.name, d.env["MODEL_TYPE"]) for d in routing.DEPLOYMENTS if d.function == "train"]


@dataclass
class Sources:
    store: ObjectStore
    settings: GatewaySettings

    # ------------------------------------------------------------------ objects
    def identifiers(self) -> list[str]:
        found = set()
        for key in self.store.list_keys(self.settings.raw_bucket):
            parts = key.split("/")
            if len(parts) == 3 and parts[1] == "uploads":
                found.add(parts[0])
        for key in self.store.list_keys(self.settings.promotion_bucket):
            parts = key.split("/")
            if len(parts) == 2 and parts[1] == "current.json":
                found.add(parts[0])
        return sorted(found)

    def latest_upload(self, identifier: str) -> dict | None:
        records = []
        for key in self.store.list_keys(self.settings.raw_bucket, f"{identifier}/uploads/"):
            try:
                records.append(get_json(self.store, self.settings.raw_bucket, key))
            except (ObjectNotFound, StorageError):
                continue
        return max(records, key=lambda r: r.get("time", ""), default=None)

    def processed(self, identifier: str, upload: dict) -> dict | None:
        """The newest `.meta.json` built from the upload's training file."""
        found = []
        for key in self.store.list_keys(self.settings.processed_bucket, f"{identifier}/"):
            if not key.endswith("/.meta.json"):
                continue
            try:
                meta = get_json(self.store, self.settings.processed_bucket, key)
            except (ObjectNotFound, StorageError):
                continue
            train = (meta.get("source_objects") or {}).get("train") or {}
            if train.get("sha256") == upload["sha256"] and train.get("object_key") == upload["train_key"]:
                found.append(meta)
        return max(found, key=lambda m: m.get("created_at", ""), default=None)

    def pointer(self, identifier: str) -> dict | None:
        try:
            return get_json(self.store, self.settings.promotion_bucket, current_key(identifier))
        except (ObjectNotFound, StorageError):
            return None

    # ------------------------------------------------------------------ MLflow
    def experiment(self, identifier: str) -> str:
        return self.settings.experiment_name or f"flts-{identifier}"

    def runs(self, identifier: str, config_hash: str) -> list[dict]:
        """Runs tagged with the config hash, newest first: run_id, model_type, status, start, end, metrics, error."""
        uploads.check_identifier(identifier)
        if not config_hash.replace("-", "").replace("_", "").replace(".", "").isalnum():
            return []
        query = f"tags.config_hash = '{config_hash}'"
        try:
            return self._rest_runs(identifier, query) if self._rest else self._client_runs(identifier, query)
        except Exception as exc:  # noqa: BLE001 - a status page reports, it does not fail
            log("gateway_mlflow_unavailable", level="warning", error=f"{type(exc).__name__}: {exc}")
            return []

    @property
    def _rest(self) -> bool:
        return self.settings.tracking_uri.startswith(("http://", "https://"))

    def _rest_runs(self, identifier: str, query: str) -> list[dict]:
        base = self.settings.tracking_uri.rstrip("/")
        with httpx.Client(timeout=10, trust_env=False) as client:
            got = client.get(f"{base}/api/2.0/mlflow/experiments/get-by-name",
                             params={"experiment_name": self.experiment(identifier)})
            if got.status_code == 404:
                return []
            got.raise_for_status()
            experiment_id = got.json()["experiment"]["experiment_id"]
            found = client.post(f"{base}/api/2.0/mlflow/runs/search", json={
                "experiment_ids": [experiment_id], "filter": query, "max_results": 200,
                "order_by": ["attributes.start_time DESC"]})
            found.raise_for_status()
        return [_run(r["info"], {m["key"]: m["value"] for m in r.get("data", {}).get("metrics", [])},
                     {t["key"]: t["value"] for t in r.get("data", {}).get("tags", [])})
                for r in found.json().get("runs", [])]

    def _client_runs(self, identifier: str, query: str) -> list[dict]:
        client = self._mlflow_client()
        experiment = client.get_experiment_by_name(self.experiment(identifier))
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=query, max_results=200,
                                  order_by=["attributes.start_time DESC"])
        return [_run({"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
                      "end_time": r.info.end_time}, dict(r.data.metrics), dict(r.data.tags)) for r in runs]

    def _mlflow_client(self):
        import mlflow  # embedded only: a remote server is read over its REST API, without the client

        return mlflow.MlflowClient(tracking_uri=self.settings.tracking_uri or None)

    def plot(self, run_id: str) -> bytes:
        """The promoted run's forecast-vs-actual PNG; ObjectNotFound when it has none."""
        if self._rest:
            base = self.settings.tracking_uri.rstrip("/")
            try:
                with httpx.Client(timeout=20, trust_env=False) as client:
                    got = client.get(f"{base}/get-artifact", params={"path": PLOT, "run_uuid": run_id})
            except httpx.HTTPError as exc:
                raise ObjectNotFound("mlflow", f"runs:/{run_id}/{PLOT} (MLflow unreachable: {exc})") from None
            if got.status_code != 200:
                raise ObjectNotFound("mlflow", f"runs:/{run_id}/{PLOT} ({got.status_code})")
            return got.content
        try:
            path = self._mlflow_client().download_artifacts(run_id, PLOT)
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            raise ObjectNotFound("mlflow", f"runs:/{run_id}/{PLOT}") from None
        with open(path, "rb") as fh:
            return fh.read()

    # ------------------------------------------------------------------ dead letters
    def dead_letters(self) -> dict[str, list[dict]] | None:
        """identifier → its dead letters (newest last); None when Kafka is not configured or not reachable."""
        if not self.settings.kafka:
            return None
        try:
            return _read_dead_letters(self.settings.kafka)
        except Exception as exc:  # noqa: BLE001 - a status page reports, it does not fail
            log("gateway_kafka_unavailable", level="warning", error=f"{type(exc).__name__}: {exc}")
            return None


def _run(info: dict, metrics: dict, tags: dict) -> dict:
    return {"run_id": info["run_id"], "model_type": tags.get("model_type"), "status": info.get("status"),
            "start": _ms(info.get("start_time")), "end": _ms(info.get("end_time")), "metrics": metrics,
            "error": tags.get("error")}


def _ms(value) -> str | None:
    if not value:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(value) / 1000))


def _read_dead_letters(bootstrap: str) -> dict[str, list[dict]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="flts-gateway",
                             request_timeout_ms=5000)
    try:
        topics = [t for t in routing.all_topics() if t.startswith("dlq-")]
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not parts:
            return {}
        consumer.assign(parts)
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(starts[tp], ends[tp] - DLQ_TAIL))
        found: dict[str, list[dict]] = {}
        deadline = time.monotonic() + DLQ_READ_SECONDS
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                for record in records:
                    letter = _letter(record)
                    if letter:
                        found.setdefault(letter["identifier"], []).append(letter)
        for letters in found.values():
            letters.sort(key=lambda x: x["time"])
        return found
    finally:
        consumer.close(autocommit=False)


def _letter(record) -> dict | None:
    try:
        letter = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    event = letter.get("event") if isinstance(letter.get("event"), dict) else {}
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    identifier = event.get("subject") or data.get("identifier")
    if not identifier:
        return None
    return {"identifier": identifier, "topic": record.topic, "offset": record.offset,
            "time": _ms(record.timestamp), "function": letter.get("function"), "event_type": event.get("type"),
            "event_id": event.get("id"), "status": letter.get("status"), "attempts": letter.get("attempts"),
            "error": str(letter.get("error", ""))[:2000]}


# ---------------------------------------------------------------------- the report
def pipeline(sources: Sources, identifier: str, letters: dict[str, list[dict]] | None) -> dict:
    """What GET /pipelines/{identifier} answers (docs/contracts.md, "The gateway")."""
    upload = sources.latest_upload(identifier)
    pointer = sources.pointer(identifier)
    mine = None if letters is None else letters.get(identifier, [])
    stages = _stages(sources, identifier, upload, pointer)
    return {"identifier": identifier, "upload": upload, "state": _state(upload, stages, mine),
            "stages": stages, "champion": _champion(identifier, pointer), "dead_letters": mine}


def _stages(sources: Sources, identifier: str, upload: dict | None, pointer: dict | None) -> list[dict]:
    if upload is None:
        return []
    stages = [{"stage": "upload", "state": "done", "time": upload["time"], "id": upload["id"]}]
    meta = sources.processed(identifier, upload)
    if meta is None:
        return stages + [{"stage": "preprocess", "state": "waiting", "time": None}]
    config_hash = meta["config_hash"]
    stages.append({"stage": "preprocess", "state": "done", "time": meta.get("created_at"),
                   "config_hash": config_hash, "rows": meta.get("row_count"), "test_rows": meta.get("test_row_count")})
    runs = sources.runs(identifier, config_hash)
    for deployment, model_type in trainers():
        run = next((r for r in runs if r["model_type"] == model_type), None)
        stages.append({"stage": deployment, "model_type": model_type, "state": "waiting", "time": None} if run is None
                      else {"stage": deployment, "model_type": model_type, "state": run["status"],
                            "time": run["end"] or run["start"], "run_id": run["run_id"],
                            "metrics": _some(run["metrics"]), "error": run["error"]})
    promoted = pointer is not None and pointer.get("config_hash") == config_hash
    stages.append({"stage": "eval", "state": "done" if promoted else "waiting",
                   "time": pointer["timestamp"] if promoted else None,
                   **({"model_type": pointer["model_type"], "run_id": pointer["run_id"]} if promoted else {})})
    served = promoted and _artifact_present(sources, pointer)
    stages.append({"stage": "served", "state": "done" if served else "waiting",
                   "time": pointer["timestamp"] if served else None,
                   **({"artifact": f"{pointer['artifact_bucket']}/{pointer['artifact_key']}"} if served else {})})
    return stages


def _artifact_present(sources: Sources, pointer: dict) -> bool:
    try:
        return sources.store.exists(pointer["artifact_bucket"], pointer["artifact_key"])
    except (StorageError, KeyError):
        return False


def _some(metrics: dict) -> dict:
    """The figures worth a glance: validation and test scores, not every logged metric."""
    keep = ("val_score", "val_nrmse", "score", "nrmse", "rmse", "mae")
    return {k: metrics[k] for k in keep if k in metrics}


def _state(upload: dict | None, stages: list[dict], letters: list[dict] | None) -> str:
    if upload is None:
        return "no upload"
    if any(s["stage"] == "served" and s["state"] == "done" for s in stages):
        return "promoted"
    if letters and any((x["time"] or "") >= upload["time"][:19] for x in letters):
        return "dead-lettered"
    if any(s["state"] == "FAILED" for s in stages) and not any(s["stage"] == "eval" for s in stages):
        return "failed"
    return "running"


def _champion(identifier: str, pointer: dict | None) -> dict | None:
    if pointer is None:
        return None
    keys = ("model_type", "run_id", "config_hash", "score", "rmse", "mae", "mse", "timestamp", "artifact_format")
    quoted = urllib.parse.quote(identifier)
    return {**{k: pointer.get(k) for k in keys}, "plot_url": f"/plot/{quoted}.png",
            "model_url": f"/download/model/{quoted}", "pointer_url": f"/download/pointer/{quoted}"}
