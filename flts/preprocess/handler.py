"""Preprocess: a raw CSV in object storage → feature Parquet keyed by the config hash.

The output location is `processed-data/<identifier>/<config_hash>/{train,test}.parquet`
with a `.meta.json` claim beside them. Everything that changes the output goes into the
config hash (docs/design.md principle 3), so a repeated event finds its output and only
re-announces it (`skip_idempotent`).
"""
from __future__ import annotations

import hashlib
import io
import time
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flts import events
from flts.events import DataClaim, DatasetReady
from flts.logs import log
from flts.preprocess import timeaxis
from flts.preprocess.errors import DataError
from flts.preprocess.settings import PreprocessSettings
from flts.settings import Env
from flts.storage import ObjectStore, get_json, put_json, store_from_env

FUNCTION = "preprocess"


# ---------------------------------------------------------------- config identity

def build_active_config(settings: PreprocessSettings, sources: dict[str, dict]) -> dict:
    """Every knob that changes the output, the data's identity and the salt."""
    return {"preprocess": settings.knobs(), "sources": sources, "extra_hash_salt": settings.extra_hash_salt}


def canonical_json(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config)).hexdigest()


def source_identity(bucket: str, key: str, raw: bytes) -> dict:
    return {"bucket": bucket, "object_key": key, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


# ---------------------------------------------------------------- pure data logic

def check_size(size: int, settings: PreprocessSettings, name: str) -> None:
    if size > settings.max_bytes:
        raise DataError(f"{name}: {size} bytes is over the limit of {settings.max_bytes} (MAX_UPLOAD_BYTES)")


def fetch_raw(store: ObjectStore, bucket: str, key: str, settings: PreprocessSettings) -> bytes:
    """The raw file, refused by its size (a HEAD) before any byte of it is downloaded."""
    check_size(store.size(bucket, key), settings, key)
    return store.get_bytes(bucket, key)


def read_csv(raw: bytes, settings: PreprocessSettings, name: str) -> pd.DataFrame:
    """Parse and check a raw CSV; every refusal names the file and the problem."""
    check_size(len(raw), settings, name)  # the object may have grown since fetch_raw's stat
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{name}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas turns surplus leading fields into an index
        raise DataError(f"{name}: rows have more fields than the header ({len(frame.columns)} columns)")
    if frame.empty:
        raise DataError(f"{name}: the file has a header but no rows")
    ts = settings.timestamp_column
    if ts not in frame.columns:
        raise DataError(f"{name}: no timestamp column {ts!r} (columns: {list(frame.columns)}); set TIMESTAMP_COLUMN")
    frame = frame.drop(columns=[c for c in settings.drop_columns if c in frame.columns])
    raw_times = frame[ts]
    frame[ts] = timeaxis.parse_times(raw_times, settings, name)
    timeaxis.check_time_order(frame[ts], raw_times, settings, name)
    _check_numeric(frame, ts, settings.target, name)
    if settings.target not in frame.columns:
        raise DataError(f"{name}: no target column {settings.target!r}; set TARGET_COLUMN")
    if frame[settings.target].isna().all():
        raise DataError(f"{name}: the target column {settings.target!r} has no values")
    return frame.reset_index(drop=True)


def _check_numeric(frame: pd.DataFrame, ts: str, target: str, name: str) -> None:
    bad = {}
    for column in frame.columns:
        if column == ts:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        not_numeric = values.isna() & frame[column].notna()
        if not_numeric.any():
            bad[column] = f"{column!r} (e.g. {frame[column][not_numeric].iloc[0]!r})"
        else:
            # inf is a broken measurement, not a value: impute it like an empty cell
            frame[column] = values.astype("float64").replace([np.inf, -np.inf], np.nan)
    if target in bad:  # the target cannot be dropped: DROP_COLUMNS would be the wrong hint
        raise DataError(f"{name}: the target column {bad[target]} is not numeric; fix the data or set "
                        f"TARGET_COLUMN to a numeric column")
    if bad:
        raise DataError(f"{name}: non-numeric columns {', '.join(bad.values())}; drop them with DROP_COLUMNS")
    if len(frame.columns) < 2:
        raise DataError(f"{name}: no numeric column besides the timestamp")


def impute(frame: pd.DataFrame, ts: str) -> pd.DataFrame:
    """Fill empty cells along time: interpolate inside, carry to the edges, 0 for an empty column."""
    values = frame.drop(columns=[ts])
    filled = values.interpolate(limit_direction="both").fillna(0.0)
    return pd.concat([frame[[ts]], filled], axis=1)


def fit_clip_bounds(train: pd.DataFrame, ts: str, quantiles: tuple[float, float]) -> dict[str, tuple[float, float]]:
    values = train.drop(columns=[ts])
    low, high = values.quantile(quantiles[0]), values.quantile(quantiles[1])
    return {c: (float(low[c]), float(high[c])) for c in values.columns}


def clip(frame: pd.DataFrame, bounds: dict[str, tuple[float, float]]) -> pd.DataFrame:
    frame = frame.copy()
    for column, (low, high) in bounds.items():
        frame[column] = frame[column].clip(low, high)
    return frame


def add_time_features(frame: pd.DataFrame, ts: str, timezone: str = "") -> pd.DataFrame:
    """Cyclic encodings so 23:58 sits next to 00:00 and Sunday next to Monday.

    Of the local wall-clock time when TIMEZONE is set (the stored timestamps are UTC): daily
    and weekly cycles follow the clock people live by, and infer computes the same features
    from the wall-clock time of the timestamps a request sends.
    """
    times = frame[ts]
    if timezone:
        times = times.dt.tz_localize("UTC").dt.tz_convert(timezone).dt.tz_localize(None)
    minute = times.dt.hour * 60 + times.dt.minute
    day = times.dt.day_of_week
    frame = frame.copy()
    frame["minute_sin"] = np.sin(2 * np.pi * minute / 1440.0)
    frame["minute_cos"] = np.cos(2 * np.pi * minute / 1440.0)
    frame["dow_sin"] = np.sin(2 * np.pi * day / 7.0)
    frame["dow_cos"] = np.cos(2 * np.pi * day / 7.0)
    return frame


def transform(train: pd.DataFrame, test: pd.DataFrame, settings: PreprocessSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Impute, clip (bounds fitted on the training part only), add time features."""
    ts = settings.timestamp_column
    train, test = impute(train, ts), impute(test, ts)
    if settings.clip_outliers:
        bounds = fit_clip_bounds(train, ts, settings.clip_quantiles)
        train, test = clip(train, bounds), clip(test, bounds)
    if settings.time_features:
        train, test = add_time_features(train, ts, settings.timezone), add_time_features(test, ts, settings.timezone)
    return train, test


def split_by_time(frame: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not 0 < test_fraction < 1:
        raise DataError(f"TEST_FRACTION must be between 0 and 1, got {test_fraction}")
    cut = int(round(len(frame) * (1 - test_fraction)))
    if cut < 1 or cut >= len(frame):
        raise DataError(f"{len(frame)} rows are too few to split into train and test")
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)


def read_test_file(raw: bytes, train: pd.DataFrame, settings: PreprocessSettings, name: str) -> pd.DataFrame:
    """The test file: the training file's columns, in their order, starting after the training data ends."""
    test = read_csv(raw, settings, name)
    if set(test.columns) != set(train.columns):
        raise DataError(f"{name}: columns {sorted(test.columns)} differ from the training file's "
                        f"{sorted(train.columns)}")
    test = test[train.columns]
    _check_test_follows(train, test, settings.timestamp_column, name)
    return test


def _check_test_follows(train: pd.DataFrame, test: pd.DataFrame, ts: str, name: str) -> None:
    """A test file overlapping the training period would score models on training data."""
    if test[ts].iloc[0] <= train[ts].iloc[-1]:
        raise DataError(f"{name}: the test data starts at {test[ts].iloc[0]}, not after the training data ends "
                        f"({train[ts].iloc[-1]}; column {ts!r}, row 1)")


def read_splits(raw: bytes, raw_test: bytes | None, request: DatasetReady,
                settings: PreprocessSettings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Train and test on one regular grid (the training file's step and phase), and its `time_axis`."""
    ts = settings.timestamp_column
    files = {request.object_key: read_csv(raw, settings, request.object_key)}
    if raw_test is not None:
        files[request.test_object_key] = read_test_file(raw_test, files[request.object_key], settings,
                                                         request.test_object_key)
    first = files[request.object_key][ts]
    step = timeaxis.regular_step(first, request.object_key)
    gridded = [timeaxis.put_on_grid(frame, ts, step, first.iloc[0], name) for name, frame in files.items()]
    train, test = gridded if raw_test is not None else split_by_time(gridded[0], settings.test_fraction)
    grid = timeaxis.gap_report([frame[ts] for frame in files.values()], step)
    return train, test, time_axis(train, test, ts, step, grid)


def time_axis(train: pd.DataFrame, test: pd.DataFrame, ts: str, step: pd.Timedelta, grid: dict) -> dict:
    """What later stages read about the time axis, in `.meta.json` and the Parquet metadata."""
    return {
        "frequency_seconds": step.total_seconds(),
        "seasonal_periods": timeaxis.seasonal_periods(len(train), step),
        # only then is the training tail the lookback of the first test window
        "test_follows_train": bool(test[ts].iloc[0] == train[ts].iloc[-1] + step),
        "grid": grid,
    }


def to_parquet(frame: pd.DataFrame, config: dict, digest: str, axis: dict | None = None) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[b"preprocess_config"] = canonical_json(config)
    metadata[b"config_hash"] = digest.encode()
    metadata.update({key.encode(): canonical_json(value) for key, value in (axis or {}).items()})
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- the handler

def output_keys(identifier: str, digest: str) -> dict[str, str]:
    prefix = f"{identifier}/{digest}"
    return {"train": f"{prefix}/train.parquet", "test": f"{prefix}/test.parquet", "meta": f"{prefix}/.meta.json"}


def handle(event, env: Env) -> list:
    """`flts.dataset.ready` → `flts.training-data` (and `flts.inference-data` when enabled)."""
    request: DatasetReady = events.parse_data(event, (events.DATASET_READY,))
    settings = PreprocessSettings.from_env(env)
    store = store_from_env(env)
    meta = preprocess(store, request, settings)
    claim = DataClaim(
        bucket=settings.processed_bucket,
        object_key=meta["objects"]["train"],
        test_object_key=meta["objects"]["test"],
        meta_key=meta["objects"]["meta"],
        config_hash=meta["config_hash"],
        identifier=request.identifier,
        rows=meta["row_count"],
        test_rows=meta["test_row_count"],
        target=settings.target,
        timestamp_column=settings.timestamp_column,
        columns=meta["column_names"],
    )
    out = [events.make_event(events.TRAINING_DATA, FUNCTION, claim)]
    if settings.emit_inference_data:
        out.append(events.make_event(events.INFERENCE_DATA, FUNCTION, claim))
    return out


def preprocess(store: ObjectStore, request: DatasetReady, settings: PreprocessSettings) -> dict:
    """Run (or skip) preprocessing for one dataset and return its `.meta.json` claim."""
    started = time.perf_counter()
    raw = fetch_raw(store, request.bucket, request.object_key, settings)
    sources = {"train": source_identity(request.bucket, request.object_key, raw)}
    raw_test = None
    if request.test_object_key:
        raw_test = fetch_raw(store, request.bucket, request.test_object_key, settings)
        sources["test"] = source_identity(request.bucket, request.test_object_key, raw_test)
    config = build_active_config(settings, sources)
    digest = config_hash(config)
    keys = output_keys(request.identifier, digest)
    bucket = settings.processed_bucket

    if not settings.force and all(store.exists(bucket, k) for k in keys.values()):
        meta = get_json(store, bucket, keys["meta"])
        log("skip_idempotent", identifier=request.identifier, config_hash=digest, object_key=keys["train"])
        return meta

    train, test, axis = read_splits(raw, raw_test, request, settings)
    log("preprocess_grid", identifier=request.identifier, config_hash=digest, **axis["grid"],
        frequency_seconds=axis["frequency_seconds"], seasonal_periods=axis["seasonal_periods"],
        test_follows_train=axis["test_follows_train"])
    train, test = transform(train, test, settings)

    store.ensure_bucket(bucket)
    store.put_bytes(bucket, keys["train"], to_parquet(train, config, digest, axis))
    store.put_bytes(bucket, keys["test"], to_parquet(test, config, digest, axis))
    meta = {
        "identifier": request.identifier,
        "source_objects": sources,
        "config": config,
        "config_hash": digest,
        "created_at": datetime.now(UTC).isoformat(),
        "row_count": len(train),
        "test_row_count": len(test),
        "column_names": list(train.columns),
        "objects": keys,
        "bucket": bucket,
        **axis,
    }
    put_json(store, bucket, keys["meta"], meta)  # written last: its presence means the outputs are complete
    log("preprocess_done", identifier=request.identifier, config_hash=digest, rows=len(train),
        test_rows=len(test), seconds=round(time.perf_counter() - started, 3))
    return meta
