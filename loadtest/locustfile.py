"""Locust load test of the inference function: POST /predict with real windows from the
test data, plus health checks, after a warm-up; exits non-zero when the error ratio or
the p95 latency passes its threshold.

    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 15s -H http://127.0.0.1:8080

Environment:
    LOADTEST_DATA            CSV of real rows (default data/lte/PobleSec_test.csv)
    LOADTEST_WINDOWS         distinct request windows cut from it (default 200)
    LOADTEST_WARMUP          warm-up requests before the run, not counted (default 20)
    LOADTEST_MAX_FAIL_RATIO  failing exit above this error ratio (default 0.01)
    LOADTEST_MAX_P95_MS      failing exit above this p95 in ms (default 200)
Any non-200 answer (429 included) counts as an error: below the limit there should be none.
"""
from __future__ import annotations

import csv
import json
import os
import random
import urllib.request
from pathlib import Path

from locust import FastHttpUser, between, events, task

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LOADTEST_DATA", ROOT / "data" / "lte" / "PobleSec_test.csv"))
WINDOWS = int(os.environ.get("LOADTEST_WINDOWS", "200"))
WARMUP = int(os.environ.get("LOADTEST_WARMUP", "20"))
MAX_FAIL_RATIO = float(os.environ.get("LOADTEST_MAX_FAIL_RATIO", "0.01"))
MAX_P95_MS = float(os.environ.get("LOADTEST_MAX_P95_MS", "200"))

BODIES: list[bytes] = []


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def build_bodies(path: Path, length: int, timestamp_column: str, count: int) -> list[bytes]:
    """`count` request bodies of `length` consecutive real rows (empty cells carried forward)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c != timestamp_column]
    rng = random.Random(0)
    bodies = []
    for _ in range(count):
        start = rng.randrange(0, len(rows) - length + 1)
        window = rows[start:start + length]
        data = {timestamp_column: [r[timestamp_column] for r in window]}
        for column in columns:
            values, previous = [], 0.0
            for r in window:
                previous = float(r[column]) if r[column].strip() else previous
                values.append(previous)
            data[column] = values
        bodies.append(json.dumps({"data": data}).encode())
    return bodies


@events.test_start.add_listener
def prepare(environment, **_):
    host = environment.host.rstrip("/")
    ready = _get_json(f"{host}/readyz")
    model = ready["model"]
    if model is None:
        raise RuntimeError(f"{host} serves no model yet: {ready.get('reason')}")
    BODIES[:] = build_bodies(DATA, model["history_rows"], model["timestamp_column"], WINDOWS)
    for body in BODIES[:WARMUP]:  # warm-up: first connections, first ORT runs; not in the stats
        request = urllib.request.Request(f"{host}/predict", data=body, headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()


@events.quitting.add_listener
def enforce_thresholds(environment, **_):
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) or 0.0
    failed = total.fail_ratio > MAX_FAIL_RATIO or p95 > MAX_P95_MS or total.num_requests == 0
    print(f"loadtest: {total.num_requests} requests, error ratio {total.fail_ratio:.4f} (max {MAX_FAIL_RATIO}), "
          f"p95 {p95:.0f} ms (max {MAX_P95_MS:.0f}) -> {'FAIL' if failed else 'PASS'}")
    if failed:
        environment.process_exit_code = 1


class PredictUser(FastHttpUser):
    wait_time = between(0.0, 0.01)

    @task(20)
    def predict(self):
        self.client.post("/predict", data=random.choice(BODIES), headers={"Content-Type": "application/json"})

    @task(1)
    def healthz(self):
        self.client.get("/healthz")

    @task(1)
    def readyz(self):
        self.client.get("/readyz")
