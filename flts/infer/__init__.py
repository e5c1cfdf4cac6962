"""The inference function: ONNX serving behind a bounded queue, and its event handlers.

Modules (the request path imports numpy, onnxruntime, starlette, prometheus_client, orjson
and the shared contracts; never torch, pandas, MLflow or prophet):

- settings:   every knob, read from the environment once
- features:   request body → model input window (numpy only, time features included)
- model:      pointer → ONNX Runtime session (or the lazily imported Prophet path), warm-up
- registry:   the served models, swapped atomically
- batcher:    admission (MAX_INFLIGHT), bounded queue, TTL, micro-batching, worker lanes
- metrics:    Prometheus metrics (multiprocess-aware)
- app:        the Starlette ASGI app (/predict, health, /metrics, /scale_workers, v2, CloudEvents)
- events:     the routing table's CloudEvent handler (model-selected, inference-data)
- frontdoor:  scale-to-zero proxy for the local full stack
- server:     `python -m flts.infer` runs uvicorn (httptools + uvloop) on the app
- demo:       `serve_one_forecast` for `make demo`
- bench / loadgen: `flts bench`
"""
