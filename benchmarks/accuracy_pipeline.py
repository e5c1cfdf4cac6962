"""The embedded pipeline of benchmarks/accuracy.py: preprocess → every registered family → eval,
then every family's served artifact loaded back for scoring on eval's scoring frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from flts import events, forecasters, routing
from flts.dev.demo import embedded_env, upload_dataset
from flts.embedded import Delivery, EmbeddedRouter
from flts.eval import scoring
from flts.eval.ensemble import MODEL_TYPE as ENSEMBLE
from flts.eval.handler import mlflow_client, search_settled
from flts.storage import FileStore


@dataclass
class PipelineRun:
    claim: dict
    pointer: dict
    env: dict
    experiment: str
    failed: dict[str, str]  # MODEL_TYPE -> why it has no run (its FAILED event or dead letter)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def run_pipeline(dataset: str, data_dir: Path, workdir: Path, knobs: dict[str, str]) -> PipelineRun:
    """preprocess → trainers → eval, embedded in a fresh workdir (so a run of another horizon is
    never re-announced as a duplicate). A family that fails (e.g. a horizon over its limit)
    is recorded; eval promotes among the families that trained."""
    env = {**embedded_env(workdir), **knobs}
    store = FileStore(env["FLTS_OBJECT_DIR"])
    router = EmbeddedRouter(env, [d for d in routing.DEPLOYMENTS if d.function != "infer"], on_delivery=_progress)
    started = time.perf_counter()
    router.publish(events.make_event(events.DATASET_READY, "benchmark", upload_dataset(store, dataset, data_dir)))
    router.run()
    trained = _of_type(router, events.MODEL_TRAINING)
    failed = _failed_families(router, trained)
    if not _of_type(router, events.MODEL_SELECTED) and failed:
        _promote_among_trained(router, env, trained)
    stage_seconds: dict[str, float] = {}
    for d in router.deliveries:
        stage_seconds[d.deployment] = round(stage_seconds.get(d.deployment, 0.0) + d.seconds, 2)
    selected, claims = _of_type(router, events.MODEL_SELECTED), _of_type(router, events.TRAINING_DATA)
    if not claims or not selected:
        errors = [d.error for d in router.dead_letters()] + list(failed.values())
        raise RuntimeError(f"{dataset}: the pipeline promoted no model ({'; '.join(errors) or 'see the logs'})")
    successes = [t for t in trained if t["status"] == "SUCCESS"]
    return PipelineRun(claims[0], selected[-1], env, successes[0]["experiment"], failed, stage_seconds,
                       time.perf_counter() - started)


def _progress(d: Delivery) -> None:
    outcome = f"FAILED: {d.error[:200]}" if d.error else "-> " + (", ".join(d.emitted) or "nothing")
    print(f"    {d.deployment:<14} {d.seconds:7.1f}s  {outcome}", flush=True)


def _of_type(router: EmbeddedRouter, event_type: str) -> list[dict]:
    return [e.data for e in router.published if e["type"] == event_type]


def _failed_families(router: EmbeddedRouter, trained: list[dict]) -> dict[str, str]:
    failed = {t["model_type"]: t.get("error") or "FAILED" for t in trained if t["status"] == "FAILED"}
    for letter in router.dead_letters():  # a trainer that refused its settings never announced a run
        model_type = routing.deployment(letter.deployment).env.get("MODEL_TYPE")
        if model_type:
            failed.setdefault(model_type, letter.error)
    succeeded = {t["model_type"] for t in trained if t["status"] == "SUCCESS"}
    return {t: why for t, why in failed.items() if t not in succeeded}


def _promote_among_trained(router: EmbeddedRouter, env: dict, trained: list[dict]) -> None:
    """A trainer that refused its settings left no MLflow run, and eval waits for every expected
    family: tell it which ones trained and re-deliver their SUCCESS events (the event of the
    last run to finish promotes, the others defer to it)."""
    successes = [t for t in trained if t["status"] == "SUCCESS"]
    if not successes:
        return
    types = ",".join(sorted({t["model_type"] for t in successes}))
    print(f"    eval again, expecting only the families that trained: {types}", flush=True)
    again = EmbeddedRouter({**env, "EXPECTED_MODEL_TYPES": types}, [routing.deployment("eval")], on_delivery=_progress)
    for success in successes:
        again.publish(events.make_event(events.MODEL_TRAINING, "benchmark", success))
    again.run()
    router.published.extend(e for e in again.published if e["type"] != events.MODEL_TRAINING)
    router.deliveries.extend(again.deliveries)


@dataclass
class Family:
    model_type: str
    run_id: str
    signature: dict
    model: object  # a ScoringModel


def load_split(run: PipelineRun) -> scoring.Split:
    store = FileStore(run.env["FLTS_OBJECT_DIR"])
    claim = run.claim
    return scoring.Split(scoring.read_parquet(store, claim["bucket"], claim["object_key"]),
                         scoring.read_parquet(store, claim["bucket"], claim["test_object_key"]))


def load_families(run: PipelineRun, workdir: Path) -> dict[str, Family]:
    """The newest finished run of every family that trained (and of eval's ensemble, when it built
    one), loaded as eval loads it."""
    client = mlflow_client(run.env["MLFLOW_TRACKING_URI"])
    runs = search_settled(client, run.experiment, run.claim["config_hash"], limit=200)
    loaded = {}
    for model_type in (*forecasters.names(), ENSEMBLE):
        if model_type in runs and not runs[model_type].failed:
            cand = runs[model_type]
            artifact = scoring.download_serving_artifact(client, cand.run_id, model_type, workdir / cand.run_id)
            loaded[model_type] = Family(model_type, cand.run_id, artifact.signature, scoring.load_forecaster(artifact))
    if run.pointer["run_id"] not in {f.run_id for f in loaded.values()}:
        raise RuntimeError(f"the promoted run {run.pointer['run_id']} is not the newest of its family")
    return loaded
