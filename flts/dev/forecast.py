"""Serving one forecast from a CSV: the last step of `make demo`, and `flts predict`'s request body.

The app is the one `uvicorn functions.infer.main:app` serves; its startup resolves the
promotion pointer and loads the ONNX file from object storage exactly as the server does,
and the request goes through the ASGI app in-process (starlette's TestClient), so the
forecast below really was served by POST /predict.
"""
from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path

from flts.settings import Env
from flts.storage import ObjectStore


def last_rows(path: Path, count: int) -> list[dict[str, str]]:
    """The last `count` rows of a CSV; SystemExit with a one-line reason when it has fewer."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    if len(rows) < count:
        raise SystemExit(f"error: {path} has {len(rows)} rows; the forecast needs {count}")
    return rows[-count:]


def request_body(rows: list[dict[str, str]], timestamp_column: str) -> dict:
    """Columns as /predict takes them. Empty cells carry the previous value forward
    (the server refuses missing values rather than guessing); SystemExit names a bad cell."""
    if timestamp_column not in rows[0]:
        raise SystemExit(f"error: the CSV has no column {timestamp_column!r} (--timestamp-column); "
                         f"it has {list(rows[0])}")
    data: dict[str, list] = {timestamp_column: [r[timestamp_column] for r in rows]}
    for column in rows[0]:
        if column != timestamp_column:
            data[column] = _numbers(rows, column)
    return {"data": data, "index_col": timestamp_column}


def _numbers(rows: list[dict[str, str]], column: str) -> list[float]:
    values, previous = [], 0.0
    for i, row in enumerate(rows):
        cell = (row[column] or "").strip()
        try:
            previous = float(cell) if cell else previous
        except ValueError:
            raise SystemExit(f"error: column {column!r}, row {i + 1} of those sent: {cell!r} is not a number") from None
        values.append(previous)
    return values


def serve_one_forecast(env: Env, store: ObjectStore, dataset: str, test_csv: Path) -> dict:
    from flts.infer.app import create_app

    with warnings.catch_warnings():  # starlette asks for httpx2, which nothing else here needs
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

    started = time.perf_counter()
    app = create_app({**env, "MODEL_IDENTIFIER": dataset}, store)
    with TestClient(app) as client:  # runs the app's startup: pointer → ONNX session, warmed
        loaded = time.perf_counter() - started
        ready = client.get("/readyz")
        if ready.status_code != 200:
            raise SystemExit(f"the inference app is not ready: {ready.text}")
        model = ready.json()["model"]
        if model is None:
            raise SystemExit(f"the inference app has no model: {ready.json().get('reason', ready.text)}")
        length, horizon, target = model["history_rows"], model["output_seq_len"], model["target"]
        # The window ends `horizon` rows before the file does, so the actual values can be shown too.
        rows = last_rows(test_csv, length + horizon)
        window, actual = rows[:length], rows[length:]
        body = request_body(window, model["timestamp_column"])
        t0 = time.perf_counter()
        response = client.post("/predict", json=body)
        latency_ms = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise SystemExit(f"POST /predict answered {response.status_code}: {response.text}")
    result = response.json()
    _print(model, body, result, actual, target, latency_ms, loaded)
    return result


def _print(model: dict, body: dict, result: dict, actual: list[dict], target: str, latency_ms: float, loaded: float) -> None:
    times = body["data"][body["index_col"]]
    print("\nforecast served by POST /predict (in-process ASGI app)")
    print(f"  model       {model['model_type']} run {model['run_id']} ({model['format']}), identifier {model['identifier']}")
    print(f"  config_hash {model['config_hash'][:16]}…  model load {loaded:.2f}s  request {latency_ms:.1f} ms")
    print(f"  request     {len(times)} rows {times[0]} → {times[-1]}, {len(body['data']) - 1} columns")
    level = next((key[len("lower_"):] for key in result["predictions"][0] if key.startswith("lower_")), None)
    interval = f"{level} % interval" if level else ""
    print(f"\n  {'ts':<22}{'forecast ' + target:>22}{'actual':>18}{'error %':>10}  {interval}".rstrip())
    for prediction, row in zip(result["predictions"], actual, strict=False):
        value, truth = prediction[target], float(row[target]) if row.get(target) else float("nan")
        err = f"{100 * (value - truth) / truth:+.1f}" if truth == truth and truth else "n/a"
        bounds = f"  {prediction[f'lower_{level}']:,.0f} … {prediction[f'upper_{level}']:,.0f}" if level else ""
        print(f"  {prediction['ts']:<22}{value:>22,.0f}{truth:>18,.0f}{err:>10}{bounds}")
