"""The train function: `flts.training-data` in, `flts.model-training` RUNNING + SUCCESS|FAILED out.

One deployment per MODEL_TYPE (a family of flts.forecasters) runs this same handler. A run:
1. reads the claimed train/test Parquet and checks it (bad data → FAILED, nothing trained);
2. looks in MLflow for a FINISHED run of this model type and config hash and, if there is
   one, re-announces it instead of training (durable dedup, SKIP_DUPLICATE_CONFIGS);
3. trains, scores the served artifact on the test windows with flts.metrics, logs params,
   metrics and artifacts, closes the run and only then announces SUCCESS.
A store out of reach (flts.storage.is_transient: S3 or MLflow refused, timed out, 5xx) is no
verdict on the model: the run is marked KILLED, not FAILED, and the exception escapes, so the
caller's retry (HTTP 503) trains again once the store is back.
"""
from __future__ import annotations

import re
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flts import events, forecasters
from flts.events import DataClaim, EventError, ModelTraining
from flts.intervals import IntervalScaling, conformal_intervals
from flts.logs import error, log
from flts.metrics import TargetScale, regression_metrics
from flts.settings import Env
from flts.storage import is_transient, store_from_env
from flts.train import artifacts, data, tracking
from flts.train.errors import TrainError
from flts.train.settings import TrainSettings

FUNCTION = "train"
MAX_ERROR_CHARS = 4000  # an event stays a small claim, whatever the error says
_SAFE_TAG = re.compile(r"^[A-Za-z0-9._-]+$")  # values that go into an MLflow filter string


@dataclass(frozen=True)
class Job:
    claim: DataClaim
    settings: TrainSettings
    target: str
    timestamp_column: str
    experiment: str


@dataclass(frozen=True)
class Outcome:
    run_id: str | None  # None: it failed before MLflow had a run
    metrics: dict[str, float]
    deduplicated: bool = False
    error: str | None = None  # set when it failed


def handle(event, env: Env) -> Iterator:
    """Yields RUNNING at the start, then SUCCESS or FAILED; raises EventError only for an invalid event.

    A generator, so the HTTP entry can send RUNNING through K_SINK before training begins.
    """
    claim: DataClaim = events.parse_data(event, (events.TRAINING_DATA,))
    if not _SAFE_TAG.match(claim.config_hash):
        raise EventError(f"{events.TRAINING_DATA}: config_hash {claim.config_hash!r} may only hold letters, digits, '.', '_' and '-'")
    settings = TrainSettings.from_env(env)  # a misconfigured deployment raises ConfigError
    job = Job(claim, settings, claim.target or settings.target, claim.timestamp_column or settings.timestamp_column,
              settings.experiment_name or f"flts-{claim.identifier}")
    yield _event(job, "RUNNING")
    log("train_start", model_type=settings.model_type, identifier=claim.identifier, config_hash=claim.config_hash,
        object_key=claim.object_key, experiment=job.experiment)
    try:
        outcome = train(job, env)
    except Exception as exc:  # noqa: BLE001 - every failure is announced, except a store out of reach
        if is_transient(exc):
            raise  # nothing is settled: the event is delivered again
        outcome = Outcome(None, {}, error=_failure(job, exc))
    if outcome.error:  # with the run id when MLflow recorded the run: eval then promotes among the rest
        yield _event(job, "FAILED", run_id=outcome.run_id, error=outcome.error)
        return
    log("train_success_publish", model_type=settings.model_type, identifier=claim.identifier,
        config_hash=claim.config_hash, run_id=outcome.run_id, experiment=job.experiment,
        deduplicated=outcome.deduplicated, metrics=outcome.metrics)
    yield _event(job, "SUCCESS", run_id=outcome.run_id, metrics=outcome.metrics, deduplicated=outcome.deduplicated)


def _failure(job: Job, exc: Exception) -> str:
    """The FAILED event's message (logged too): bad data or a failed check says it all, else the type and a traceback."""
    expected = isinstance(exc, TrainError)
    message = (str(exc) if expected else f"{type(exc).__name__}: {exc}")[:MAX_ERROR_CHARS]
    error("train_failed", model_type=job.settings.model_type, identifier=job.claim.identifier,
          config_hash=job.claim.config_hash, error=message,
          **({} if expected else {"traceback": traceback.format_exc(limit=8)}))
    return message


def _event(job: Job, status: str, **extra):
    claim = job.claim
    body = ModelTraining(status=status, model_type=job.settings.model_type, experiment=job.experiment,
                         config_hash=claim.config_hash, identifier=claim.identifier, bucket=claim.bucket,
                         object_key=claim.object_key, test_object_key=claim.test_object_key, **extra)
    return events.make_event(events.MODEL_TRAINING, FUNCTION, body)


def train(job: Job, env: Env) -> Outcome:
    """One MLflow run: re-announced when a finished one exists, else recorded FINISHED or FAILED."""
    settings, claim = job.settings, job.claim
    client = tracking.client(settings.tracking_uri)
    exp_id = tracking.experiment_id(client, job.experiment, settings.artifact_root)
    # a run a killed trainer left RUNNING becomes KILLED; a live one's end is waited for (then found below)
    tracking.settle_unfinished_runs(client, exp_id, settings.model_type, claim.config_hash)
    if settings.skip_duplicates:
        previous = tracking.find_finished_run(client, exp_id, settings.model_type, claim.config_hash)
        if previous is not None:
            log("skip_idempotent", function=FUNCTION, model_type=settings.model_type, config_hash=claim.config_hash,
                run_id=previous.info.run_id)
            return Outcome(previous.info.run_id, tracking.summary_metrics(previous), deduplicated=True)

    tags = {"model_type": settings.model_type, "config_hash": claim.config_hash, "identifier": claim.identifier,
            "function": FUNCTION, tracking.OWNER_TAG: tracking.owner()}
    # The run exists before the data is read, so a failure of any kind is recorded against it.
    run_id = tracking.start_run(client, exp_id, f"{settings.model_type}-{claim.config_hash[:8]}", tags).info.run_id
    try:
        metrics = _train_run(job, env, client, run_id)
    except Exception as exc:  # noqa: BLE001 - recorded as FAILED, announced by the handler
        if is_transient(exc):  # KILLED settles nothing (eval waits, dedup skips it): the retry trains anew
            tracking.finish(client, run_id, "KILLED", error=f"the store was out of reach, the event comes again: "
                                                           f"{type(exc).__name__}: {exc}")
            raise
        message = _failure(job, exc)
        tracking.finish(client, run_id, "FAILED", error=message)
        return Outcome(run_id, {}, error=message)
    except BaseException as exc:  # interrupted: close the run, let the interruption go on
        tracking.finish(client, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    tracking.finish(client, run_id, "FINISHED")
    print(f"{settings.model_type} {claim.identifier}: test nrmse {metrics['nrmse']:.4f}, rmse {metrics['rmse']:.4f}, "
          f"train {metrics['train_seconds']:.1f}s (run {run_id})", flush=True)
    return Outcome(run_id, metrics)


def _train_run(job: Job, env: Env, client, run_id: str) -> dict:
    settings, claim = job.settings, job.claim
    split = data.load(store_from_env(env), claim.bucket, claim.object_key, claim.test_object_key,
                      job.target, job.timestamp_column)
    data.check_train_rows(len(split.train.target), settings.input_seq_len, settings.output_seq_len)
    data.check_test_rows(len(split.test.target), settings.input_seq_len, settings.output_seq_len)
    tracking.log_params(client, run_id, {**settings.hyperparameters(), "model_type": settings.model_type,
                                         "config_hash": claim.config_hash, "identifier": claim.identifier,
                                         "target": job.target, "timestamp_column": job.timestamp_column,
                                         "n_features": len(split.feature_columns),
                                         "train_rows": len(split.train.target), "test_rows": len(split.test.target)})
    with tempfile.TemporaryDirectory(prefix="flts-train-") as tmp:
        folder = Path(tmp)
        metrics, series = fit_and_write(job, split, folder)
        tracking.log_metrics(client, run_id, metrics, series)
        client.log_artifacts(run_id, str(folder))  # the folder mirrors the artifact layout
    return metrics


def fit_and_write(job: Job, split: data.TrainData, folder: Path) -> tuple[dict, dict]:
    """Fit this MODEL_TYPE's family and write the run's artifact folder; returns (metrics, per-epoch series).

    Scored on what is served: the family forecasts the test windows with its serving model.
    """
    family = forecasters.family(job.settings.model_type)
    fitted = family.fit(job.settings, split, folder, f"{family.name} {job.claim.identifier}")
    target_scale = TargetScale.fit(split.train.target)
    metrics = {**regression_metrics(fitted.truth, fitted.forecast, target_scale), **fitted.metrics}
    signature = _signature(job, split, family, fitted)
    if fitted.validation is not None:
        val_metrics, signature["intervals"] = _validation(job.settings, fitted.validation, target_scale,
                                                          split.train.target, _interval_scalings(job, signature))
        metrics.update(val_metrics)
    artifacts.write_serving_model(folder / family.name, family.model_file, fitted.model_bytes, signature)
    if fitted.validation is not None:  # eval averages candidates' validation forecasts to try an ensemble
        artifacts.write_validation(folder / family.name, *fitted.validation)
    artifacts.write_scaler(folder / "scaler", fitted.scaler, split.feature_columns, job.target, target_scale)
    return metrics, fitted.series


def _interval_scalings(job: Job, signature: dict) -> list[IntervalScaling]:
    """The scalings the intervals may take: none (fixed widths) for a model that does not read its
    target, else the recent one and, on a grid a day divides, the seasonal one."""
    if job.target not in signature["feature_columns"]:
        return []
    settings = job.settings
    seasonal = IntervalScaling.daily(signature.get("frequency_seconds"), settings.interval_season_days)
    return [IntervalScaling.recent(settings.interval_scale_rows, settings.interval_short_scale_rows),
            *([seasonal] if seasonal else [])]


def _validation(settings: TrainSettings, validation: tuple, target_scale: TargetScale, train_target,
                scalings: list[IntervalScaling]) -> tuple[dict, dict]:
    """The validation windows' metrics (`val_` prefixed: eval chooses on them) and the conformal
    intervals their residuals give (they travel in signature.json to the promotion pointer)."""
    forecast, truth = validation
    metrics = {f"val_{name}": value for name, value in regression_metrics(truth, forecast, target_scale).items()}
    metrics["val_windows"] = len(truth)
    return metrics, conformal_intervals(truth, forecast, list(settings.interval_levels), train_target, scalings)



def _signature(job: Job, split: data.TrainData, family: forecasters.Family, fitted: forecasters.Fitted) -> dict:
    s = job.settings
    # A family that reads only the timestamps (Prophet) takes no feature column.
    columns = (fitted.feature_columns or split.feature_columns) if family.format.takes_features else []
    return artifacts.signature(fmt=family.format.name, feature_columns=columns, target=job.target,
                               timestamp_column=job.timestamp_column,
                               input_seq_len=fitted.input_seq_len or s.input_seq_len,
                               output_seq_len=s.output_seq_len, frequency_seconds=split.frequency_seconds(),
                               config_hash=job.claim.config_hash, model_type=s.model_type)
