"""The infer deployment's CloudEvent handlers (routing table: `flts.infer.handler:handle`).

- `flts.model-selected`: a notice that a promotion happened, never an authority (anyone
  reaching POST / could forge it). Infer reads the pointers in PROMOTION_BUCKET
  (flts.infer.pointers): it serves the event's identifier its champion from
  `<identifier>/current.json` and sets the default to the champion of `current.json`,
  each loaded and warmed before one reference is swapped. A pointer to a missing or broken
  artifact, dated in the future or naming a bucket the settings do not, is refused (logged
  `model_swap_refused`) and the current models keep serving. A champion already served is
  skipped.
- `flts.inference-data`: windowed forecasts over the claimed Parquet (its test object when
  the claim has one), written with their metrics to INFERENCE_LOG_BUCKET under
  `<identifier>/<config_hash>/<run_id>/` as new objects; a redelivery finds them and
  skips (`skip_idempotent`). pyarrow is imported here only, never on the request path.

The HTTP app calls `apply_event` with its own registry; the embedded router calls
`handle`, which keeps a registry for the process.
"""
from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import numpy as np

from flts import events
from flts.events import DataClaim, EventError, PromotionPointer
from flts.infer import prometheus as metrics
from flts.infer.features import TIME_FEATURES, time_features, wall_seconds
from flts.infer.model import ModelError, ServedModel, load_model
from flts.infer.pointers import champion_pointer, default_pointer, refuse_future, resolved_pointer
from flts.infer.registry import ModelRegistry
from flts.infer.settings import ServingSettings
from flts.logs import error, log, warn
from flts.settings import Env
from flts.storage import ObjectNotFound, ObjectStore, StorageError, put_json, store_from_env

FUNCTION = "infer"
HANDLED = (events.MODEL_SELECTED, events.INFERENCE_DATA)
_CHUNK_WINDOWS = 1024

_process_registry: ModelRegistry | None = None


def process_registry(settings: ServingSettings) -> ModelRegistry:
    global _process_registry
    if _process_registry is None:
        _process_registry = ModelRegistry(settings.max_models, settings.max_model_bytes)
    return _process_registry


def handle(event, env: Env) -> list:
    """Embedded-router entry: no reply events."""
    settings = ServingSettings.from_env(env)
    apply_event(event, store_from_env(env), settings, process_registry(settings))
    return []


def apply_event(event, store: ObjectStore, settings: ServingSettings, registry: ModelRegistry) -> dict:
    data = events.parse_data(event, HANDLED)
    if event["type"] == events.MODEL_SELECTED:
        return on_model_selected(store, data, settings, registry)
    return run_inference_job(store, data, settings, registry)


# ---------------------------------------------------------------- model-selected

def on_model_selected(store: ObjectStore, notice: PromotionPointer, settings: ServingSettings,
                      registry: ModelRegistry) -> dict:
    """The event is a notice, not an authority: serve what the promotion bucket's pointers say
    (the notice's identifier's champion, and the default), whatever the event names."""
    try:
        refuse_future(notice.timestamp, settings, f"the flts.model-selected event for {notice.identifier} "
                                                  f"(run {notice.run_id})")
        champion = champion_pointer(store, settings, notice.identifier)
        outcome = serve(registry, champion, load_from_pointer(store, champion, settings, registry))
    except (ObjectNotFound, ModelError, StorageError) as exc:
        metrics.MODEL_SWAPS.labels("refused").inc()
        error("model_swap_refused", identifier=notice.identifier, event_run_id=notice.run_id, error=str(exc),
              serving=repr(registry.cached(notice.identifier)))
        raise
    if champion.run_id != notice.run_id:  # a late event, or a forged one: logged, never obeyed
        warn("model_selected_not_current", identifier=notice.identifier, event_run_id=notice.run_id,
             current_run_id=champion.run_id)
    try:
        refresh_default(store, settings, registry)
    except (ObjectNotFound, ModelError, StorageError) as exc:  # the identifier's champion is served all the same
        error("default_model_kept", error=str(exc), serving=repr(registry.default))
    return outcome


def serve(registry: ModelRegistry, pointer: PromotionPointer, model: ServedModel) -> dict:
    """Install `model` for its identifier; skipped when it is served already."""
    previous = registry.cached(pointer.identifier)
    if previous is model:
        metrics.MODEL_SWAPS.labels("skipped").inc()
        log("skip_idempotent", identifier=pointer.identifier, run_id=pointer.run_id, reason="already served")
        return {"status": "skipped", "run_id": pointer.run_id}
    mark_served(model, registry.install(pointer.identifier, model))
    metrics.MODEL_SWAPS.labels("swapped").inc()
    log("model_swapped", identifier=pointer.identifier, run_id=model.info.run_id,
        previous_run_id=previous.info.run_id if previous else None, load_seconds=round(model.load_seconds, 4))
    return {"status": "swapped", "run_id": model.info.run_id, "previous_run_id": previous.info.run_id if previous else None}


def refresh_default(store: ObjectStore, settings: ServingSettings, registry: ModelRegistry) -> ServedModel:
    """Make the default the champion of current.json (or of MODEL_IDENTIFIER) if it is not already."""
    pointer = default_pointer(store, settings)
    model = load_from_pointer(store, pointer, settings, registry)
    if model is not registry.default:
        mark_served(model, registry.install_default(model))
        log("default_model_set", identifier=pointer.identifier, run_id=pointer.run_id)
    return model


def load_from_pointer(store: ObjectStore, pointer: PromotionPointer, settings: ServingSettings,
                      registry: ModelRegistry) -> ServedModel:
    """The held model of this pointer, or the model loaded and warmed (the old one serves meanwhile)."""
    return registry.held(pointer) or load_model(store, pointer, settings)


def load_champion(store: ObjectStore, settings: ServingSettings, registry: ModelRegistry, identifier: str) -> ServedModel:
    """A request names an identifier that is not held: load its champion and hold it."""
    pointer = champion_pointer(store, settings, identifier)
    model = load_from_pointer(store, pointer, settings, registry)
    dropped = registry.install(identifier, model, replace=False)  # one an event installed meanwhile is newer: it wins
    held = registry.cached(identifier) or model
    if held is model:
        mark_served(model, dropped)
    return held


def mark_served(model: ServedModel, dropped: list[ServedModel]) -> None:
    for old in dropped:
        if old is not model:
            metrics.MODEL_INFO.labels(**old.info.labels()).set(0)
    metrics.MODEL_INFO.labels(**model.info.labels()).set(1)
    metrics.MODEL_LOAD.set(model.load_seconds)


# ---------------------------------------------------------------- inference-data

def result_prefix(claim: DataClaim, model: ServedModel) -> str:
    return f"{claim.identifier}/{claim.config_hash}/{model.info.run_id}"


def run_inference_job(store: ObjectStore, claim: DataClaim, settings: ServingSettings,
                      registry: ModelRegistry) -> dict:
    max_bytes = settings.max_inference_bytes
    started = time.perf_counter()
    model = _model_for(store, claim, settings, registry)
    prefix, bucket = result_prefix(claim, model), settings.inference_log_bucket
    if store.exists(bucket, f"{prefix}/metrics.json"):
        log("skip_idempotent", identifier=claim.identifier, config_hash=claim.config_hash, object_key=f"{prefix}/metrics.json")
        return {"status": "skipped", "prefix": prefix}

    data_key = claim.test_object_key or claim.object_key
    table = _read_parquet(store, claim.bucket, data_key, max_bytes)
    features, target, times = _columns(table, model, data_key)
    forecasts, actuals, origins = _forecast_windows(model, features, target, times)

    store.ensure_bucket(bucket)
    store.put_bytes(bucket, f"{prefix}/forecasts.parquet", _results_parquet(model, forecasts, actuals, origins))
    summary = {
        "identifier": claim.identifier, "config_hash": claim.config_hash, "run_id": model.info.run_id,
        "model_type": model.info.model_type, "model_config_hash": model.info.config_hash,
        "data": f"{claim.bucket}/{data_key}", "windows": int(len(forecasts)), "rows": int(len(times)),
        "metrics": _metrics(store, claim, model, forecasts, actuals, data_key, max_bytes),
        "seconds": round(time.perf_counter() - started, 3),
        "created_at": datetime.now(UTC).isoformat(),
    }
    put_json(store, bucket, f"{prefix}/metrics.json", summary)  # last: its presence means the job finished
    log("inference_job_done", identifier=claim.identifier, config_hash=claim.config_hash, run_id=model.info.run_id,
        windows=summary["windows"], seconds=summary["seconds"], object_key=f"{prefix}/metrics.json")
    return {"status": "done", "prefix": prefix, **summary["metrics"]}


def _model_for(store, claim: DataClaim, settings, registry: ModelRegistry) -> ServedModel:
    held = registry.cached(claim.identifier)
    if held is not None:
        return held
    try:
        return load_from_pointer(store, resolved_pointer(store, settings, claim.identifier), settings, registry)
    except ObjectNotFound as exc:
        # No promoted model yet: a retry after eval has promoted one will succeed (not an EventError).
        raise RuntimeError(f"no promoted model to forecast {claim.identifier} with yet ({exc})") from None


def _read_parquet(store, bucket: str, key: str, max_bytes: int):
    import pyarrow.parquet as pq  # noqa: PLC0415 - batch path only

    raw = store.get_bytes(bucket, key)
    if len(raw) > max_bytes:
        raise EventError(f"{bucket}/{key}: {len(raw)} bytes is over the limit of {max_bytes} (MAX_INFERENCE_BYTES)")
    try:
        return pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise EventError(f"{bucket}/{key} is not readable Parquet: {exc}") from None


def _columns(table, model: ServedModel, key: str):
    """The feature matrix [rows, F] in the model's order, the target (or None) and wall times."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    spec = model.spec
    if spec.timestamp_column not in table.column_names:
        raise EventError(f"{key}: no timestamp column {spec.timestamp_column!r} (columns: {table.column_names})")
    ts = table[spec.timestamp_column]
    if not pa.types.is_timestamp(ts.type):
        raise EventError(f"{key}: column {spec.timestamp_column!r} is {ts.type}, not a timestamp")
    if ts.type.tz:  # wall-clock time, as the time features were computed in preprocess
        ts = pc.local_timestamp(ts)
    wall = wall_seconds(ts.to_numpy())
    computed = time_features(wall)
    missing = [c for c in spec.feature_columns if c not in table.column_names and c not in TIME_FEATURES]
    if missing:
        raise EventError(f"{key}: missing feature columns {missing}")
    columns = []
    for name in spec.feature_columns:
        if name in table.column_names:
            columns.append(table[name].to_numpy(zero_copy_only=False).astype(np.float32))
        else:
            columns.append(computed[name].astype(np.float32))
    features = np.column_stack(columns)
    if not np.all(np.isfinite(features)):
        bad = spec.feature_columns[int(np.argmax(~np.isfinite(features).all(axis=0)))]
        raise EventError(f"{key}: column {bad!r} has NaN or infinite values")
    target = None
    if spec.target in table.column_names:
        target = table[spec.target].to_numpy(zero_copy_only=False).astype(np.float32)
    return features, target, wall


def _forecast_windows(model: ServedModel, features, target, wall):
    """Forecasts of every full window, in chunks so memory stays bounded."""
    from numpy.lib.stride_tricks import sliding_window_view

    length, horizon = model.spec.input_seq_len, model.spec.output_seq_len
    count = len(features) - length - horizon + 1 if target is not None else len(features) - length + 1
    if count < 1:
        raise EventError(f"{len(features)} rows are too few for one window of {length} + {horizon} rows")
    view = sliding_window_view(features, length, axis=0)  # [N, F, L], no copy
    step = np.full(1, _step_seconds(model, wall))
    forecasts = []
    for start in range(0, count, _CHUNK_WINDOWS):
        stop = min(count, start + _CHUNK_WINDOWS)
        x = np.ascontiguousarray(view[start:stop].transpose(0, 2, 1), dtype=np.float32)
        last = wall[start + length - 1: stop + length - 1]
        forecasts.append(model.predict(x, last, np.repeat(step, len(x))))
    forecasts = np.concatenate(forecasts)
    actuals = None
    if target is not None:
        actuals = np.ascontiguousarray(sliding_window_view(target[length:], horizon)[:count], dtype=np.float32)
    origins = wall[length - 1: length - 1 + count]
    return forecasts, actuals, origins


def _step_seconds(model: ServedModel, wall) -> float:
    return model.spec.frequency_seconds or (float(np.median(np.diff(wall))) if len(wall) > 1 else 0.0)


def _results_parquet(model: ServedModel, forecasts, actuals, origins) -> bytes:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    windows, horizon = forecasts.shape
    step_seconds = _step_seconds(model, origins)
    steps = np.tile(np.arange(1, horizon + 1), windows)
    origin = np.repeat(origins, horizon)
    columns = {
        "origin": pa.array((origin * 1e6).astype("datetime64[us]")),
        "step": pa.array(steps.astype(np.int32)),
        "ts": pa.array(((origin + steps * step_seconds) * 1e6).astype("datetime64[us]")),
        "forecast": pa.array(forecasts.ravel()),
        "actual": pa.array(actuals.ravel()) if actuals is not None else pa.nulls(windows * horizon, pa.float32()),
    }
    buffer = io.BytesIO()
    table = pa.table(columns).replace_schema_metadata({"run_id": model.info.run_id, "target": model.spec.target})
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _metrics(store, claim: DataClaim, model, forecasts, actuals, data_key: str, max_bytes: int) -> dict:
    """Eval's metrics (flts.metrics), with the target scale fitted on the training object."""
    if actuals is None:
        return {}
    from flts.metrics import TargetScale, regression_metrics  # noqa: PLC0415

    train_target = actuals[:, 0]
    if claim.test_object_key and data_key == claim.test_object_key:
        train = _read_parquet(store, claim.bucket, claim.object_key, max_bytes)
        if model.spec.target in train.column_names:
            train_target = train[model.spec.target].to_numpy(zero_copy_only=False)
    try:
        return regression_metrics(actuals, forecasts, TargetScale.fit(train_target))
    except ValueError as exc:  # non-finite forecasts: report instead of failing the job
        return {"error": str(exc)}
