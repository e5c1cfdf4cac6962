"""The inference function: ONNX serving behind a bounded queue, and its event handlers.

Modules (the request path imports numpy, onnxruntime, starlette, prometheus_client, orjson
and the shared contracts; never torch, pandas, MLflow or prophet):

- settings:   every knob, read from the environment once
- features:   request body → model input window (numpy only, time features included)
- model:      pointer → ONNX Runtime session (or the lazily imported Prophet path), warm-up
- pointers:   which model to serve: the promotion bucket's pointers, checked (never an event's word)
- registry:   the served models (the default, and each named identifier's champion in an LRU
              bounded by MAX_MODELS and MAX_MODEL_BYTES), swapped atomically
- admission:  the prediction routes' front: API key, the whole body within a deadline, a slot,
              then the route called directly (no router on the hot path)
- batcher:    admission count (MAX_INFLIGHT), bounded queue, TTL, micro-batching, worker lanes,
              and the inline run of a lone fast request
- prometheus: Prometheus metrics (multiprocess-aware)
- app:        the Starlette ASGI app (/predict, health, /metrics, /scale_workers, v2, CloudEvents)
- handler:    the CloudEvent handler (model-selected, inference-data)
- server:     `python -m flts.infer serve` runs uvicorn (httptools + uvloop) on the app

Its tooling (the scale-to-zero front door of the local stack, `flts bench`, the load
generator, test helpers) lives in flts.dev.
"""
from flts import events
from flts.infer.settings import MAX_INFLIGHT
from flts.spec import Capacity, FunctionSpec, Scaling, Server

SPEC = FunctionSpec(
    name="infer",
    handler="flts.infer.handler:handle",
    takes=(events.MODEL_SELECTED, events.INFERENCE_DATA),
    emits=(),
    settings="flts.infer.settings:ServingSettings",
    server=Server.UVICORN,
    entry="app",
    scaling=Scaling.REQUEST_SERVER,
    # Knative's concurrency limit = infer's own admission limit: beyond it, 429 (backpressure).
    capacity=Capacity(concurrency=MAX_INFLIGHT, target_utilization=75, max_scale=10,
                      timeout_seconds=30, requests={"cpu": "250m", "memory": "512Mi"},
                      limits={"cpu": "1", "memory": "1Gi"}),
    public=True,
    # /scale_workers needs SCALE_WORKERS_TOKEN, else EVENT_TOKEN; open only when both are empty (infer is public).
    secrets=("S3_ACCESS_KEY", "S3_SECRET_KEY", "SCALE_WORKERS_TOKEN", "PREDICT_API_KEY"),
    env={"MAX_INFLIGHT": str(MAX_INFLIGHT)},
)
