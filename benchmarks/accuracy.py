"""Accuracy benchmark: the whole embedded pipeline per dataset, against baselines and the paper.

    .venv/bin/python benchmarks/accuracy.py [--datasets PobleSec ElBorn] [--data-dir data/lte]

For each dataset: upload `<X>.csv` and `<X>_test.csv`, run preprocess → the three
trainers → eval through the embedded router (a fresh temp workdir), then score every
trained run, the promoted one and two baselines on the same test windows:

- persistence:     y_t = y_{t-1} (the window's last input value of the target);
- seasonal naive:  y_t = y_{t-season}, one day earlier on the data's own grid.

Figure: NRMSE = RMSE / mean(y), original units, one step ahead (the paper's metric).
References (arXiv 2211.15220, data/lte/README.md): LSTM (FedNova, final) and persistence.
Prints a table and writes JSON (--out). Exit status 1 when the promoted model does not
beat both the paper's final LSTM and persistence on some dataset.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from flts import events, forecasters, routing
from flts.dev.demo import DATA_DIR, embedded_env, upload_dataset
from flts.embedded import EmbeddedRouter
from flts.eval import scoring
from flts.eval.handler import mlflow_client, search_finished
from flts.storage import FileStore

REPO = Path(__file__).resolve().parent.parent

PAPER = {  # NRMSE on the _test.csv windows, one step ahead (data/lte/README.md)
    "PobleSec": {"lstm_fednova": 0.5063, "lstm_fedavg": 0.5139, "persistence": 0.5704},
    "ElBorn": {"lstm_fednova": 0.4510, "lstm_fedavg": 0.4726, "persistence": 0.5186},
}


def run_pipeline(dataset: str, data_dir: Path, workdir: Path) -> dict:
    """preprocess → trainers → eval, embedded; returns the events that matter and stage times."""
    env = embedded_env(workdir)
    store = FileStore(env["FLTS_OBJECT_DIR"])
    # Serving is not measured here: stop at eval's model-selected event.
    deployments = [d for d in routing.DEPLOYMENTS if d.function != "infer"]
    router = EmbeddedRouter(env, deployments, on_delivery=lambda d: print(
        f"  {d.deployment:<14} {d.seconds:8.2f}s  {d.error or '-> ' + (', '.join(d.emitted) or 'nothing')}", flush=True))
    started = time.perf_counter()
    router.publish(events.make_event(events.DATASET_READY, "benchmark", upload_dataset(store, dataset, data_dir)))
    router.run()
    failures = router.dead_letters()
    if failures:
        raise RuntimeError(f"{dataset}: {len(failures)} delivery(ies) failed: {[f.error for f in failures]}")
    by_type = {}
    for event in router.published:
        by_type.setdefault(event["type"], []).append(event.data)
    if not by_type.get(events.MODEL_SELECTED):
        raise RuntimeError(f"{dataset}: the pipeline promoted no model (see the eval logs above)")
    stage_seconds: dict[str, float] = {}
    for d in router.deliveries:
        stage_seconds[d.deployment] = stage_seconds.get(d.deployment, 0.0) + d.seconds
    return {"env": env, "store": store, "claim": by_type[events.TRAINING_DATA][0],
            "trained": by_type[events.MODEL_TRAINING], "pointer": by_type[events.MODEL_SELECTED][-1],
            "stage_seconds": stage_seconds, "pipeline_seconds": time.perf_counter() - started}


def evaluate_dataset(dataset: str, data_dir: Path, workdir: Path) -> dict:
    out = run_pipeline(dataset, data_dir, workdir)
    claim, pointer, store = out["claim"], out["pointer"], out["store"]
    train = scoring.read_parquet(store, claim["bucket"], claim["object_key"])
    test = scoring.read_parquet(store, claim["bucket"], claim["test_object_key"])

    client = mlflow_client(out["env"]["MLFLOW_TRACKING_URI"])
    experiment = next(e["experiment"] for e in out["trained"] if e.get("status") == "SUCCESS")
    runs = search_finished(client, experiment, claim["config_hash"], limit=200)
    loaded = {}
    for model_type in forecasters.names():
        cand = runs[model_type]
        artifact = scoring.download_serving_artifact(client, cand.run_id, model_type, workdir / "scoring" / cand.run_id)
        loaded[model_type] = (cand, artifact, scoring.load_forecaster(artifact))

    signatures = [a.signature for _, a, _ in loaded.values()]
    origin = scoring.first_origin(signatures)
    target = signatures[0]["target"]
    models = {}
    y_ref = None
    for model_type, (cand, artifact, model) in loaded.items():
        pred, y = model.forecast(test, origin)
        y_ref = y if y_ref is None else y_ref
        models[model_type] = {
            "run_id": cand.run_id,
            "nrmse": scoring.one_step_nrmse(y, pred),
            "input_seq_len": artifact.signature["input_seq_len"],
            "output_seq_len": artifact.signature["output_seq_len"],
            "train_seconds": cand.reported.get("train_seconds"),
            "windows": len(y),
        }

    series = test[target].to_numpy()
    frequency = signatures[0].get("frequency_seconds") or scoring.frequency_of(test, signatures[0].get("timestamp_column") or "time")
    season = scoring.season_steps(frequency)
    out_len = y_ref.shape[1]
    baselines = {
        "persistence": scoring.one_step_nrmse(y_ref, scoring.persistence_forecast(series, origin, out_len)),
        "seasonal_naive": scoring.one_step_nrmse(
            y_ref, scoring.seasonal_naive_forecast(train[target].to_numpy(), series, origin, out_len, season)),
    }
    promoted = {"model_type": pointer["model_type"], "run_id": pointer["run_id"],
                "nrmse": models[pointer["model_type"]]["nrmse"], "score": pointer["score"]}
    if promoted["run_id"] != models[pointer["model_type"]]["run_id"]:
        raise RuntimeError(f"{dataset}: promoted run {promoted['run_id']} is not the newest {pointer['model_type']} run")
    paper = PAPER.get(dataset, {})
    passed = None
    if paper:
        passed = promoted["nrmse"] < paper["lstm_fednova"] and promoted["nrmse"] < baselines["persistence"]
    return {
        "dataset": dataset, "config_hash": claim["config_hash"], "target": target,
        "frequency_seconds": frequency, "season_steps": season, "test_rows": len(test), "windows": len(y_ref),
        "models": models, "promoted": promoted, "baselines": baselines, "paper": paper, "passed": passed,
        "stage_seconds": {k: round(v, 2) for k, v in out["stage_seconds"].items()},
        "pipeline_seconds": round(out["pipeline_seconds"], 2),
    }


def print_table(result: dict) -> None:
    paper = result["paper"]
    print(f"\n{result['dataset']}: target {result['target']}, {result['windows']} test windows, "
          f"one step ahead, NRMSE = RMSE / mean(y)")
    print(f"  {'model':<26} {'NRMSE':>8} {'train s':>9}")
    for model_type, row in result["models"].items():
        seconds = f"{row['train_seconds']:.1f}" if row["train_seconds"] is not None else "-"
        print(f"  {model_type:<26} {row['nrmse']:8.4f} {seconds:>9}")
    promoted = result["promoted"]
    print(f"  {'promoted (' + promoted['model_type'] + ')':<26} {promoted['nrmse']:8.4f}")
    print(f"  {'persistence':<26} {result['baselines']['persistence']:8.4f}")
    print(f"  {'seasonal naive (' + str(result['season_steps']) + ' steps)':<26} {result['baselines']['seasonal_naive']:8.4f}")
    if paper:
        print(f"  {'paper LSTM FedNova':<26} {paper['lstm_fednova']:8.4f}")
        print(f"  {'paper LSTM FedAvg':<26} {paper['lstm_fedavg']:8.4f}")
        print(f"  {'paper persistence':<26} {paper['persistence']:8.4f}")
        verdict = "PASS" if result["passed"] else "FAIL"
        print(f"  promoted beats the paper's final LSTM and persistence: {verdict}")
    print(f"  pipeline {result['pipeline_seconds']:.1f}s: " +
          ", ".join(f"{k} {v:.1f}s" for k, v in result["stage_seconds"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["PobleSec", "ElBorn"])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder of <X>.csv and <X>_test.csv")
    parser.add_argument("--out", type=Path, default=REPO / ".flts" / "bench" / "accuracy.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the pipeline's state here (default: a temp dir)")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="flts-accuracy-") as tmp:
        for dataset in args.datasets:
            workdir = (args.workdir or Path(tmp)) / dataset
            workdir.mkdir(parents=True, exist_ok=True)
            print(f"{dataset}: running the embedded pipeline in {workdir}", flush=True)
            result = evaluate_dataset(dataset, args.data_dir, workdir)
            print_table(result)
            results.append(result)

    report = {"created": datetime.now(UTC).isoformat(), "machine": platform.platform(),
              "python": platform.python_version(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"\nwrote {args.out}")
    return 0 if all(r["passed"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
