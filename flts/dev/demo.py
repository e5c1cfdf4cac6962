"""`flts demo` / `make demo`: the whole pipeline in one process on the embedded default.

Uploads the dataset into the filesystem object store, publishes `flts.dataset.ready`
and lets the embedded router carry the events through preprocess, the trainers and
eval; then serves one forecast from the promoted model and prints it.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from flts import events, routing
from flts.dev import REPO
from flts.embedded import Delivery, EmbeddedRouter
from flts.settings import Env
from flts.storage import FileStore

DATA_DIR = REPO / "data" / "lte"
RAW_BUCKET = "raw-data"


def dataset_dir(dataset: str) -> Path:
    """The folder under data/ holding <dataset>.csv (data/lte, data/bike); data/lte when none does."""
    return next((d for d in sorted(DATA_DIR.parent.iterdir()) if (d / f"{dataset}.csv").is_file()), DATA_DIR)


def embedded_env(workdir: Path) -> dict[str, str]:
    """The embedded default: filesystem objects and a local MLflow store under workdir."""
    workdir = workdir.resolve()
    env = dict(os.environ)
    env.setdefault("FLTS_OBJECT_DIR", str(workdir / "objects"))
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    env.setdefault("MLFLOW_ARTIFACT_ROOT", str(workdir / "mlartifacts"))
    for model_specific in ("MODEL_TYPE",):  # each trainer deployment sets its own
        env.pop(model_specific, None)
    return env


def logging_env(env: Env, json_lines: bool = False) -> dict[str, str]:
    """What `flts.logs.configure` reads for the demo. Its own table shows the progress, so the
    functions' lines are short text from WARNING up (a failure still shows, with its message);
    --json or LOG_FORMAT=json gives all of them as deployed functions write them. LOG_LEVEL and
    LOG_FORMAT set in env win over these defaults."""
    if json_lines or env.get("LOG_FORMAT", "").lower() == "json":
        return {**env, "LOG_FORMAT": "json"}
    return {"LOG_FORMAT": "text", "LOG_LEVEL": "WARNING", **env}


def upload_dataset(store: FileStore, dataset: str, data_dir: Path | None = None) -> events.DatasetReady:
    data_dir = data_dir or dataset_dir(dataset)
    train, test = data_dir / f"{dataset}.csv", data_dir / f"{dataset}_test.csv"
    if not train.is_file():
        where = [data_dir] if data_dir != dataset_dir(dataset) else sorted(DATA_DIR.parent.iterdir())
        known = sorted(p.stem for d in where for p in d.glob("*.csv") if not p.stem.endswith("_test"))
        raise SystemExit(f"error: no dataset {dataset!r} in {', '.join(map(str, where))} (known: {known})")
    store.ensure_bucket(RAW_BUCKET)
    store.put_bytes(RAW_BUCKET, f"{dataset}/{train.name}", train.read_bytes(), "text/csv")
    test_key = None
    if test.is_file():
        test_key = f"{dataset}/{test.name}"
        store.put_bytes(RAW_BUCKET, test_key, test.read_bytes(), "text/csv")
    return events.DatasetReady(bucket=RAW_BUCKET, object_key=f"{dataset}/{train.name}",
                               identifier=dataset, test_object_key=test_key)


def _progress(delivery: Delivery) -> None:
    outcome = f"FAILED: {delivery.error}" if delivery.error else f"-> {', '.join(delivery.emitted) or 'nothing'}"
    print(f"  {delivery.deployment:<14} {delivery.event_type:<22} {delivery.seconds:7.2f}s  {outcome}", flush=True)


def run_demo(dataset: str, workdir: Path, fresh: bool = False, stages: str = "all") -> int:
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = embedded_env(workdir)
    store = FileStore(env["FLTS_OBJECT_DIR"])
    deployments = routing.DEPLOYMENTS if stages == "all" else [routing.deployment("preprocess")]
    router = EmbeddedRouter(env, deployments, on_delivery=_progress)

    started = time.perf_counter()
    print(f"flts demo: dataset {dataset}, embedded store {store.root}", flush=True)
    ready = upload_dataset(store, dataset)
    router.publish(events.make_event(events.DATASET_READY, "demo", ready))
    router.run()

    stage_times: dict[str, float] = {}
    for d in router.deliveries:
        stage_times[d.deployment] = stage_times.get(d.deployment, 0.0) + d.seconds
    failures = router.dead_letters()
    if stages == "all" and not failures:
        from flts.dev.forecast import serve_one_forecast  # the serving path, as infer runs it

        t0 = time.perf_counter()
        serve_one_forecast(env, store, dataset, dataset_dir(dataset) / f"{dataset}_test.csv")
        stage_times["forecast"] = time.perf_counter() - t0

    print("\nstage times:")
    for stage, seconds in stage_times.items():
        print(f"  {stage:<14} {seconds:7.2f}s")
    print(f"  {'total':<14} {time.perf_counter() - started:7.2f}s")
    if failures:
        print(f"\n{len(failures)} delivery(ies) failed; see the errors above")
        return 1
    return 0
