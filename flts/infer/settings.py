"""Serving knobs, read once from the environment (names kept from the original FLTS)."""
from __future__ import annotations

from pydantic import model_validator

from flts.settings import ConfigError, Flag, PromotionBucket, knob

# Requests in flight per instance; beyond them 429. The cluster's concurrency limit is the same number.
MAX_INFLIGHT = 64


class ServingSettings(PromotionBucket):
    # Backpressure: MAX_INFLIGHT is the function's own concurrency limit (Knative
    # containerConcurrency / OpenFaaS max_inflight use the same number).
    max_inflight: int = knob("MAX_INFLIGHT", MAX_INFLIGHT,
                             "requests admitted at once per process (= the cluster's concurrency limit); beyond it 429 "
                             "+ Retry-After, before the body is read", ge=1)
    queue_maxsize: int = knob("QUEUE_MAXSIZE", 256, "windows waiting for a lane; full → 429", ge=1)
    enable_ttl: Flag = knob("ENABLE_TTL", False, "answer 429 to a request that waited longer than REQUEST_TTL_MS")
    ttl_ms: int = knob("REQUEST_TTL_MS", 1000, "longest wait in the queue when ENABLE_TTL is on", ge=1)
    retry_after_seconds: int = knob("RETRY_AFTER_SECONDS", 1, "the Retry-After value of a 429", ge=1)
    # Micro-batching: concurrent requests share one ONNX run.
    enable_microbatch: Flag = knob("ENABLE_MICROBATCH", True, "concurrent requests share one ONNX run")
    batch_size: int = knob("BATCH_SIZE", 32, "windows per ONNX run at most", ge=1)
    batch_timeout_ms: float = knob("BATCH_TIMEOUT_MS", 0.0,
                                   "how long a lane waits for more windows after the first; 0 = take what is queued now",
                                   ge=0)
    # Inference lanes (POST /scale_workers resizes them within [1, max_workers]).
    workers: int = knob("INFER_WORKERS", 1, "inference lanes per process at start", ge=1)
    max_workers: int = knob("MAX_WORKERS", 4, "most lanes POST /scale_workers may ask for", ge=1)
    scale_token: str = knob("SCALE_WORKERS_TOKEN", "",
                            "bearer token POST /scale_workers needs; empty = open", repr=False)
    # Input bounds.
    max_body_bytes: int = knob("MAX_BODY_BYTES", 1024 * 1024, "largest request body", ge=256)
    max_rows: int = knob("MAX_ROWS", 10_000, "most rows in one request", ge=1)
    max_inference_bytes: int = knob("MAX_INFERENCE_BYTES", 200 * 1024 * 1024,
                                    "largest Parquet an inference-data event may claim", ge=1)
    # ONNX Runtime threads: 1 intra-op thread per session is fastest for small recurrent
    # models on a 2-core box (see docs/inference.md for the measurement).
    ort_intra_op_threads: int = knob("ORT_INTRA_OP_THREADS", 1, "ONNX Runtime intra-op threads per session (0 = ORT's choice)",
                                     ge=0)
    ort_inter_op_threads: int = knob("ORT_INTER_OP_THREADS", 1, "ONNX Runtime inter-op threads per session (0 = ORT's choice)",
                                     ge=0)
    # Where models and results live.
    model_identifier: str = knob("MODEL_IDENTIFIER", "",
                                 "serve this identifier's promoted model first; empty = the newest promotion")
    inference_log_bucket: str = knob("INFERENCE_LOG_BUCKET", "inference-logs",
                                     "bucket of the forecasts and metrics of inference-data jobs")
    max_models: int = knob("MAX_MODELS", 4, "models held at once, by identifier", ge=1)
    require_model: Flag = knob("REQUIRE_MODEL", False, "fail at startup when no promoted model can be loaded")
    log_lines_per_second: int = knob("HOT_LOG_LINES_PER_SECOND", 5,
                                     "hot-path log lines (queue_enqueued, predict_inference_start) per key per second",
                                     ge=0)

    @model_validator(mode="after")
    def _workers_within_max(self) -> ServingSettings:
        if self.workers > self.max_workers:
            raise ConfigError(f"INFER_WORKERS ({self.workers}) must be <= MAX_WORKERS ({self.max_workers})")
        return self

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size if self.enable_microbatch else 1
