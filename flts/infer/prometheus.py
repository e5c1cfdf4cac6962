"""Prometheus metrics of the inference function.

With several uvicorn worker processes, set PROMETHEUS_MULTIPROC_DIR (the server does) and
every process writes its samples to shared files that /metrics sums up.
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

REQUESTS = Counter("flts_infer_requests", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram("flts_infer_request_seconds", "Request latency (server side)", ["route"], buckets=_LATENCY_BUCKETS)
INFLIGHT = Gauge("flts_infer_inflight", "Requests admitted and not yet answered", multiprocess_mode="livesum")
QUEUE_DEPTH = Gauge("flts_infer_queue_depth", "Requests waiting for an inference lane", multiprocess_mode="livesum")
BATCH_SIZE = Histogram("flts_infer_batch_size", "Windows per ONNX run", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
INLINE_RUNS = Counter("flts_infer_inline_runs", "ONNX runs on the event loop (a fast model's batch; no thread)")
REJECTIONS = Counter("flts_infer_rejections", "Requests refused by backpressure", ["reason"])
MODEL_INFO = Gauge("flts_infer_model_info", "The served model (1) and replaced ones (0)",
                   ["identifier", "run_id", "model_type", "config_hash", "format"], multiprocess_mode="livemax")
MODEL_SWAPS = Counter("flts_infer_model_swaps", "model-selected events by outcome", ["outcome"])
COLD_START = Gauge("flts_infer_cold_start_seconds", "Process start to first model ready", multiprocess_mode="livemax")
MODEL_LOAD = Gauge("flts_infer_model_load_seconds", "Download + session + warm-up of the served model",
                   multiprocess_mode="livemax")
WORKERS = Gauge("flts_infer_workers", "Inference lanes", multiprocess_mode="livesum")

# Pre-bound children: a labels() lookup per request would cost a lock and a dict build.
ROUTE_LATENCY = {route: LATENCY.labels(route) for route in ("predict", "v2_infer")}


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def sample(text: str, name: str, **labels) -> float:
    """One sample's value from exposition text (0.0 when absent): for tests and the bench."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
