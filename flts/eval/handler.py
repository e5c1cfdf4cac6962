"""Eval: `flts.model-training` SUCCESS events → one promotion per config hash → `flts.model-selected`.

When every type in EXPECTED_MODEL_TYPES has a FINISHED MLflow run for a config hash, each
(newest per type) is scored on the same held-out test windows with the target scale of the
training split (docs/design.md principle 4); when the test split follows the training split,
the first windows take their inputs from the training tail, so every test row is a target
(`lookback_rows` on the scoreboard line). The lowest score wins, ties go to the newest run.
The winner's serving artifact is copied into the promotion bucket, so infer needs no MLflow
client, and the pointer is written as history + `<identifier>/current.json` + `current.json`.

Nothing is remembered between events (principle 1): which runs have finished is read
from MLflow, which runs were promoted from the history objects. A re-delivered event
rewrites the same pointer and adds no history entry (principle 2).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from flts import events, forecasters
from flts.eval import ensemble, scoring
from flts.eval.settings import EvalSettings
from flts.events import EventError, ModelTraining, PromotionPointer
from flts.forecasters import ensemble as ensemble_format
from flts.intervals import window_half_widths
from flts.logs import error, log, warn
from flts.metrics import WEIGHTS, TargetScale, regression_metrics
from flts.plots import PLOT_FILE, save_forecast_plot
from flts.promotion import current_key, history_key
from flts.settings import Env
from flts.storage import ObjectNotFound, ObjectStore, get_json, is_transient, put_json, store_from_env

FUNCTION = "eval"
CHAMPION_ALIAS = "champion"
SETTLED = ("FINISHED", "FAILED")  # run statuses that end a model type's training for a config hash
PLOT_DAYS = 3  # the plot logged with a promotion shows the last days of the test split
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# MLflow draws download progress bars on stderr, which would break the JSON-line logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class Candidate:
    run_id: str
    model_type: str
    start_time: int
    experiment: str
    reported: dict  # the trainer's own metrics, shown beside ours on the scoreboard
    end_time: int = 0
    failed: bool = False  # MLflow recorded the run FAILED: it settles its type but does not compete


# ---------------------------------------------------------------- the handler

def handle(event, env: Env) -> list:
    request: ModelTraining = events.parse_data(event, (events.MODEL_TRAINING,))
    if request.status == "RUNNING" or (request.status == "FAILED" and not request.run_id):
        # A FAILED run that MLflow never recorded cannot be the last of a set; nothing to settle.
        log("promotion_ignore", reason=f"status {request.status}", model_type=request.model_type,
            run_id=request.run_id, config_hash=request.config_hash, identifier=request.identifier)
        return []
    _check_request(request)
    settings = EvalSettings.from_env(env)
    client = mlflow_client(settings.tracking_uri)
    candidates = find_candidates(client, request, settings)
    if candidates is None:
        return []
    store = store_from_env(env)
    pointer = promote(client, store, request, candidates, settings)
    if pointer is None:
        return []
    return [events.make_event(events.MODEL_SELECTED, FUNCTION, pointer)]


def _check_request(request: ModelTraining) -> None:
    if not request.run_id:
        raise EventError(f"flts.model-training: a {request.status} event needs 'run_id'")
    # Both go into object keys and MLflow filter strings: refuse anything but plain names.
    for field in ("identifier", "config_hash"):
        value = getattr(request, field)
        if not _SAFE_NAME.match(value):
            raise EventError(f"flts.model-training: field '{field}' {value!r} may hold only letters, digits, '.', '_' and '-'")


def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or None)


# ---------------------------------------------------------------- which runs

def find_candidates(client, request: ModelTraining, settings: EvalSettings) -> list[Candidate] | None:
    """The newest FINISHED run of every expected type that did not fail, or None (logged) while
    some type has not settled (finished or failed) or when this event's run is not the last of
    them to settle (that run's event promotes). A failed family is left out; the rest compete.

    Only the event's own run may lag behind its event (a remote tracking server), so only
    its absence is worth waiting for; runs of other types that are missing simply have not
    settled yet, and their own event will come back here.
    """
    experiment_name = settings.experiment_for(request)
    for attempt in range(1, settings.search_retries + 1):
        newest = search_settled(client, experiment_name, request.config_hash, settings.lookback_runs)
        complete = all(t in newest for t in settings.expected_types)
        own_visible = any(c.run_id == request.run_id for c in newest.values())
        if complete or own_visible or attempt == settings.search_retries:
            break
        log("promotion_search_retry_wait", run_id=request.run_id, config_hash=request.config_hash,
            attempt=attempt, delay=settings.search_delay)
        time.sleep(settings.search_delay)
    missing = [t for t in settings.expected_types if t not in newest]
    if missing:
        log("promotion_waiting_for_models", identifier=request.identifier, config_hash=request.config_hash,
            experiment=experiment_name, have=sorted(newest), missing=missing)
        return None
    settled = [newest[t] for t in settings.expected_types]
    last = max(settled, key=lambda c: (c.end_time, c.run_id))
    if request.run_id != last.run_id:
        # Every trainer's event may arrive after all runs settled (the embedded router delivers
        # breadth-first): only the event of the last run to settle promotes, so one set of runs
        # gives one promotion. Its redelivery re-promotes the same pointer.
        log("promotion_deferred", run_id=request.run_id, config_hash=request.config_hash,
            promoting_run_id=last.run_id, promoting_model_type=last.model_type)
        return None
    candidates = [c for c in settled if not c.failed]
    failed = sorted(c.model_type for c in settled if c.failed)
    if not candidates:
        error("promotion_impossible", identifier=request.identifier, config_hash=request.config_hash, failed=failed)
        return None
    log("promotion_all_models_present", identifier=request.identifier, config_hash=request.config_hash,
        runs={c.model_type: c.run_id for c in candidates}, failed=failed)
    return candidates


def search_settled(client, experiment_name: str, config_hash: str, limit: int) -> dict[str, Candidate]:
    """The newest FINISHED or FAILED run per model type of a config hash."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None and experiment_name.isdigit():  # an event may carry the experiment id
        experiment = _experiment_by_id(client, experiment_name)
    if experiment is None:
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    newest: dict[str, Candidate] = {}
    for run in runs:  # newest first: the first settled run seen per type is the one that counts
        model_type = (run.data.tags.get("model_type") or run.data.params.get("model_type") or "").upper()
        if model_type and model_type not in newest and run.info.status in SETTLED:
            newest[model_type] = Candidate(run.info.run_id, model_type, run.info.start_time or 0,
                                           experiment.name, dict(run.data.metrics), run.info.end_time or 0,
                                           failed=run.info.status == "FAILED")
    return newest


def _experiment_by_id(client, experiment_id: str):
    try:
        return client.get_experiment(experiment_id)
    except Exception:  # noqa: BLE001 - MlflowException when there is no such id
        return None


# ---------------------------------------------------------------- scoring

@dataclass
class Scored:
    candidate: Candidate
    artifact: scoring.ServingArtifact
    metrics: dict
    forecast: np.ndarray | None = None  # [windows, horizon] of the scoring frame's windows, and their truths
    truth: np.ndarray | None = None


def load_split(store: ObjectStore, request: ModelTraining, settings: EvalSettings) -> scoring.Split:
    """The processed train/test Parquet the event points to (or the config hash's standard keys)."""
    from flts.preprocess.handler import output_keys

    keys = output_keys(request.identifier, request.config_hash)
    bucket = request.bucket or settings.processed_bucket
    train = scoring.read_parquet(store, bucket, request.object_key or keys["train"])
    test = scoring.read_parquet(store, bucket, request.test_object_key or keys["test"])
    return scoring.Split(train, test)


def score_candidates(client, candidates: list[Candidate], split: scoring.Split,
                     workdir: Path) -> tuple[list[Scored], scoring.ScoringFrame | None]:
    """Score every candidate on the same windows of one scoring frame (returned beside them);
    a run that cannot be scored is left out (not for a store out of reach: that escapes, the event is retried)."""
    loaded = []
    for cand in candidates:
        try:
            artifact = scoring.download_serving_artifact(client, cand.run_id, cand.model_type, workdir / cand.run_id)
            loaded.append((cand, artifact, scoring.load_forecaster(artifact)))
        except scoring.ArtifactError as exc:
            if is_transient(exc):  # the store is out of reach, the run is fine: retry the event, exclude nothing
                raise
            error("promotion_run_excluded", run_id=cand.run_id, model_type=cand.model_type, error=str(exc))
    if not loaded:
        return [], None
    frame = scoring.scoring_frame(split, [a.signature for _, a, _ in loaded])
    scored = []
    for cand, artifact, model in loaded:
        target = artifact.signature["target"]
        try:
            frame.check_enough_rows(artifact.signature["output_seq_len"])
            if target not in split.train.columns:
                raise scoring.ArtifactError(f"the training data has no target column {target!r}")
            pred, y = model.forecast(frame.frame, frame.origin)
            metrics = regression_metrics(y, pred, TargetScale.fit(split.train[target].to_numpy()))
        except (scoring.ArtifactError, ValueError) as exc:
            error("promotion_run_excluded", run_id=cand.run_id, model_type=cand.model_type, error=str(exc))
            continue
        metrics["windows"] = len(y)
        scored.append(Scored(cand, artifact, metrics, pred, y))
    return scored, frame


def selection_metric(scored: list[Scored]) -> str:
    """What the winner is chosen on: "val_score", the trainers' scores of the same validation
    windows (the training rows after the shared cut) by models that never trained on them, when
    every candidate has one on equally many windows; else "score", eval's own test score (runs
    from before validation was reported). Either way the test figures are what gets reported."""
    windows = {s.candidate.reported.get("val_windows") for s in scored}
    honest = all("val_score" in s.candidate.reported for s in scored) and len(windows) == 1
    return "val_score" if honest else "score"


def _rank(s: Scored, by: str = "score") -> tuple[float, int]:
    """Lowest score first; on a tie the newest run (latest start time)."""
    value = s.candidate.reported[by] if by == "val_score" else s.metrics["score"]
    return value, -s.candidate.start_time


def pick_winner(scored: list[Scored]) -> Scored:
    by = selection_metric(scored)
    return min(scored, key=lambda s: _rank(s, by))


def scoreboard_rows(scored: list[Scored]) -> list[dict]:
    by = selection_metric(scored)
    rows = []
    for s in sorted(scored, key=lambda s: _rank(s, by)):
        rows.append({"run_id": s.candidate.run_id, "model_type": s.candidate.model_type,
                     "start_time": s.candidate.start_time, **s.metrics, "selected_by": by,
                     "val_score": s.candidate.reported.get("val_score"),
                     "trainer_score": s.candidate.reported.get("score")})
    return rows


# ---------------------------------------------------------------- promotion

def promote(client, store: ObjectStore, request: ModelTraining, candidates: list[Candidate],
            settings: EvalSettings) -> PromotionPointer | None:
    split = load_split(store, request, settings)
    with tempfile.TemporaryDirectory(prefix="flts-eval-") as tmp:
        scored, frame = score_candidates(client, candidates, split, Path(tmp))
        if not scored:
            error("promotion_no_valid_runs", identifier=request.identifier, config_hash=request.config_hash,
                  runs=[c.run_id for c in candidates])
            return None
        # Which convention scored the test split: 0 = the test file alone (its first rows are inputs only).
        log("promotion_scoreboard", identifier=request.identifier, config_hash=request.config_hash,
            rows=len(scored), lookback_rows=frame.lookback, first_scored_test_row=frame.first_scored_test_row,
            scoreboard=scoreboard_rows(scored))
        mean = ensemble_candidate(client, scored, split, request, settings, Path(tmp))
        if mean is not None:
            scored.append(mean)
            log("promotion_ensemble", identifier=request.identifier, config_hash=request.config_hash,
                run_id=mean.candidate.run_id, members=mean.artifact.signature["members"],
                val_score=mean.candidate.reported["val_score"], score=mean.metrics["score"])
        winner = pick_winner(scored)
        artifact_key = copy_artifact(store, settings.promotion_bucket, request, winner.artifact)
        log_forecast_plot(client, winner, frame, request.identifier, Path(tmp))
    pointer = previous_promotion(store, settings.promotion_bucket, request.identifier, request.config_hash,
                                 winner.candidate.run_id)
    if pointer is None:
        pointer = build_pointer(request, winner, settings.promotion_bucket, artifact_key)
        put_json(store, settings.promotion_bucket,
                 history_key(request.identifier, request.config_hash, pointer.timestamp), pointer.model_dump(mode="json"))
    else:
        log("promotion_repeat", run_id=pointer.run_id, config_hash=request.config_hash, timestamp=pointer.timestamp)
    write_current(store, settings.promotion_bucket, current_key(request.identifier), pointer)
    write_current(store, settings.promotion_bucket, current_key(), pointer)
    log("promotion_decision", identifier=pointer.identifier, config_hash=pointer.config_hash, run_id=pointer.run_id,
        model_type=pointer.model_type, score=pointer.score, artifact_key=pointer.artifact_key)
    if settings.register_champion:
        set_champion(client, request.identifier, pointer)
    return pointer


def ensemble_candidate(client, scored: list[Scored], split: scoring.Split, request: ModelTraining,
                       settings: EvalSettings, workdir: Path) -> Scored | None:
    """The mean of the best candidates as one more candidate (flts.eval.ensemble), or None when no
    mean beats the best single one on validation (or the candidates were not chosen on validation)."""
    if settings.ensemble_max_members < 2 or len(scored) < 2 or selection_metric(scored) != "val_score":
        return None
    target = scored[0].artifact.signature["target"]
    scale = TargetScale.fit(split.train[target].to_numpy())
    validations = [ensemble.read_validation(client, s.candidate.run_id, s.candidate.model_type,
                                            workdir / "validation" / s.candidate.run_id) for s in scored]
    choice = ensemble.best_mean(validations, scale, settings.ensemble_max_members)
    if choice is None:
        log("promotion_ensemble_not_better", identifier=request.identifier, config_hash=request.config_hash)
        return None
    members = [scored[i] for i in choice.members]
    signatures = [m.artifact.signature for m in members]
    intervals = ensemble.intervals_of(choice, signatures, split.train[target].to_numpy(np.float64))
    signature = ensemble.signature(signatures, intervals, request.config_hash)
    model = ensemble_format.to_json([ensemble_format.Member(m.candidate.model_type, m.candidate.run_id,
                                                            m.artifact.signature, m.artifact.model_path.read_bytes())
                                     for m in members])
    forecast, truth = np.mean([m.forecast for m in members], axis=0), members[0].truth
    metrics = {**regression_metrics(truth, forecast, scale), "windows": len(truth)}
    artifact = write_ensemble(workdir / ensemble.MODEL_TYPE, signature, model)
    candidate = ensemble_run(client, members, request, {**ensemble.val_metrics(choice), **metrics}, artifact)
    artifact.run_id = candidate.run_id
    return Scored(candidate, artifact, metrics, forecast, truth)


def write_ensemble(folder: Path, signature: dict, model: bytes) -> scoring.ServingArtifact:
    folder.mkdir(parents=True)
    model_path, signature_path = folder / forecasters.ENSEMBLE_JSON.model_file, folder / scoring.SIGNATURE
    model_path.write_bytes(model)
    signature_path.write_bytes(orjson.dumps(signature, option=orjson.OPT_INDENT_2))
    return scoring.ServingArtifact("", ensemble.MODEL_TYPE, signature, signature_path, model_path)


def ensemble_run(client, members: list[Scored], request: ModelTraining, metrics: dict,
                 artifact: scoring.ServingArtifact) -> Candidate:
    """The MLflow run of an ensemble: found again for the same members (a redelivered event), else created."""
    experiment = client.get_experiment_by_name(members[0].candidate.experiment)
    ids = ",".join(m.candidate.run_id for m in members)
    found = client.search_runs([experiment.experiment_id], max_results=1, filter_string=(
        f"tags.config_hash = '{request.config_hash}' and tags.model_type = '{ensemble.MODEL_TYPE}' "
        f"and tags.members = '{ids}' and attributes.status = 'FINISHED'"))
    if found:
        run = found[0]
    else:
        run = client.create_run(experiment.experiment_id, run_name=f"{ensemble.MODEL_TYPE}-{request.config_hash[:8]}",
                                tags={"model_type": ensemble.MODEL_TYPE, "config_hash": request.config_hash,
                                      "identifier": request.identifier, "function": FUNCTION, "members": ids})
        for name, value in metrics.items():
            client.log_metric(run.info.run_id, name, float(value))
        client.log_artifacts(run.info.run_id, str(artifact.model_path.parent), ensemble.MODEL_TYPE)
        client.set_terminated(run.info.run_id, "FINISHED")
    return Candidate(run.info.run_id, ensemble.MODEL_TYPE, run.info.start_time or 0, experiment.name, metrics)


def log_forecast_plot(client, winner: Scored, frame: scoring.ScoringFrame, identifier: str, workdir: Path) -> None:
    """The winner's test forecasts vs the actual values, with its intervals, logged to its run
    (plots/forecast_vs_actual.png; the last PLOT_DAYS of the test split, the last forecast step).
    A plot that cannot be drawn or logged is reported, never a reason to withhold the promotion."""
    sig = winner.artifact.signature
    try:
        horizon, ts = sig["output_seq_len"], sig.get("timestamp_column") or "time"
        times = pd.to_datetime(frame.frame[ts]).iloc[frame.origin + horizon - 1:].iloc[:len(winner.truth)]
        shown = min(len(times), PLOT_DAYS * scoring.season_steps(scoring.frequency_of(frame.frame, ts)))
        nrmse, intervals = winner.metrics["nrmse"], sig.get("intervals")
        bands = []
        if intervals:
            scales = frame.window_scales(sig["target"], len(winner.truth), intervals)
            half = window_half_widths(intervals, scales)[:, -shown:, -1]
            bands = list(zip(intervals["levels"], half, strict=True))
        path = save_forecast_plot(workdir / "plots" / PLOT_FILE, times.iloc[-shown:], winner.truth[-shown:, -1],
                                  winner.forecast[-shown:, -1], bands,
                                  f"{winner.candidate.model_type} (test NRMSE {nrmse:.3f})",
                                  f"{identifier}: {sig['target']}, forecast {horizon} step(s) before each target")
        client.log_artifact(winner.candidate.run_id, str(path), "plots")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        warn("promotion_plot_failed", run_id=winner.candidate.run_id, error=f"{type(exc).__name__}: {exc}")


def artifact_prefix(identifier: str, config_hash: str, run_id: str) -> str:
    return f"{identifier}/{config_hash}/artifacts/{run_id}"


def copy_artifact(store: ObjectStore, bucket: str, request: ModelTraining, artifact: scoring.ServingArtifact) -> str:
    """Put the winner's model file and signature beside the pointer; keyed by run id, so a copy
    made again writes the same bytes to the same keys."""
    prefix = artifact_prefix(request.identifier, request.config_hash, artifact.run_id)
    store.ensure_bucket(bucket)
    model_key = f"{prefix}/{artifact.model_path.name}"
    model_bytes = artifact.model_path.read_bytes()
    store.put_bytes(bucket, model_key, model_bytes)
    store.put_bytes(bucket, f"{prefix}/{scoring.SIGNATURE}", artifact.signature_path.read_bytes(), "application/json")
    log("promotion_artifacts_ok", run_id=artifact.run_id, model_type=artifact.model_type, format=artifact.format,
        artifact_bucket=bucket, artifact_key=model_key, bytes=len(model_bytes))
    return model_key


def build_pointer(request: ModelTraining, winner: Scored, bucket: str, artifact_key: str) -> PromotionPointer:
    sig, cand = winner.artifact.signature, winner.candidate
    return PromotionPointer(
        identifier=request.identifier,
        config_hash=request.config_hash,
        run_id=cand.run_id,
        model_type=cand.model_type,
        experiment=cand.experiment,
        model_uri=f"runs:/{cand.run_id}/{cand.model_type}",
        rmse=winner.metrics["rmse"],
        mae=winner.metrics["mae"],
        mse=winner.metrics["mse"],
        score=winner.metrics["score"],
        timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        weights=dict(WEIGHTS),
        artifact_bucket=bucket,
        artifact_key=artifact_key,
        artifact_format=sig["format"],
        input_seq_len=sig["input_seq_len"],
        output_seq_len=sig["output_seq_len"],
        feature_columns=sig.get("feature_columns"),
        target=sig.get("target"),
        timestamp_column=sig.get("timestamp_column"),
        frequency_seconds=sig.get("frequency_seconds"),
        intervals=sig.get("intervals"),  # conformal, from the winner's validation residuals (the trainer's)
        nrmse=winner.metrics["nrmse"],
        mase=winner.metrics["mase"],
        rmse_orig=winner.metrics["rmse_orig"],
        mae_orig=winner.metrics["mae_orig"],
    )


def previous_promotion(store: ObjectStore, bucket: str, identifier: str, config_hash: str,
                       run_id: str) -> PromotionPointer | None:
    """The history entry that already promoted this run, if any (so redelivery adds none)."""
    for key in store.list_keys(bucket, f"{identifier}/{config_hash}/promotion-"):
        try:
            stored = get_json(store, bucket, key)
        except ObjectNotFound:
            continue
        if isinstance(stored, dict) and stored.get("run_id") == run_id:
            return PromotionPointer.model_validate(stored)
    return None


def write_current(store: ObjectStore, bucket: str, key: str, pointer: PromotionPointer) -> None:
    """Point `key` at this promotion unless it already names a newer one (a late redelivery
    of an older config must not roll the current model back)."""
    try:
        existing = get_json(store, bucket, key)
    except ObjectNotFound:
        existing = None
    newer = (isinstance(existing, dict) and existing.get("run_id") != pointer.run_id
             and _when(existing.get("timestamp")) > _when(pointer.timestamp))
    if newer:
        log("promotion_pointer_kept", key=key, current_run_id=existing.get("run_id"), run_id=pointer.run_id)
        return
    put_json(store, bucket, key, pointer.model_dump(mode="json"))


def _when(timestamp) -> datetime:
    try:
        return datetime.fromisoformat(str(timestamp))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def registered_model_name(identifier: str) -> str:
    return f"flts-{identifier}"


def set_champion(client, identifier: str, pointer: PromotionPointer) -> None:
    """Register the winner's model folder and point the `champion` alias at it (idempotent)."""
    name = registered_model_name(identifier)
    try:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{pointer.run_id}'")
        version = next((v.version for v in versions if v.source == pointer.model_uri), None)
        if version is None:
            version = client.create_model_version(name, pointer.model_uri, run_id=pointer.run_id).version
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        log("promotion_champion_alias", registered_model=name, version=str(version), run_id=pointer.run_id)
    except Exception as exc:  # noqa: BLE001 - the registry is a convenience; the pointer is the contract
        warn("promotion_registry_unavailable", registered_model=name, run_id=pointer.run_id,
             error=f"{type(exc).__name__}: {exc}")
