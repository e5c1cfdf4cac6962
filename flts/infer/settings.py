"""Serving knobs, read once from the environment (names kept from the original FLTS)."""
from __future__ import annotations

from pydantic import model_validator

from flts.auth import EventAuthSettings, Secret
from flts.settings import CommaList, ConfigError, Flag, PromotionBucket, knob

# Requests in flight per instance; beyond them 429. The cluster's concurrency limit is the same number.
MAX_INFLIGHT = 64


class ServingSettings(PromotionBucket, EventAuthSettings):  # EVENT_TOKEN (`token`): POST / needs it
    # Backpressure: MAX_INFLIGHT is the function's own concurrency limit (Knative
    # containerConcurrency / OpenFaaS max_inflight use the same number).
    max_inflight: int = knob("MAX_INFLIGHT", MAX_INFLIGHT,
                             "requests admitted at once per process (= the cluster's concurrency limit); beyond it 429 "
                             "+ Retry-After; a request is admitted once its whole body has arrived", ge=1)
    queue_maxsize: int = knob("QUEUE_MAXSIZE", 256, "windows waiting for a lane; full → 429", ge=1)
    enable_ttl: Flag = knob("ENABLE_TTL", False, "answer 429 to a request that waited longer than REQUEST_TTL_MS")
    ttl_ms: int = knob("REQUEST_TTL_MS", 1000, "longest wait in the queue when ENABLE_TTL is on", ge=1)
    retry_after_seconds: int = knob("RETRY_AFTER_SECONDS", 1, "the Retry-After value of a 429", ge=1)
    # Micro-batching: concurrent requests share one ONNX run.
    enable_microbatch: Flag = knob("ENABLE_MICROBATCH", True, "concurrent requests share one ONNX run")
    batch_size: int = knob("BATCH_SIZE", 32, "windows per ONNX run at most", ge=1)
    batch_timeout_ms: float = knob("BATCH_TIMEOUT_MS", 0.0,
                                   "how long a lane waits for more windows after the first; 0 = no timer: take what is "
                                   "queued after two turns of the event loop",
                                   ge=0)
    inline_run_ms: float = knob("INLINE_RUN_MS", 1.0,
                                "a batch runs on the event loop, not in a thread, when the model's fastest time per "
                                "window times its windows is under this; 0 = always a thread", ge=0)
    # Inference lanes (POST /scale_workers resizes them within [1, max_workers]).
    workers: int = knob("INFER_WORKERS", 1, "inference lanes per process at start", ge=1)
    max_workers: int = knob("MAX_WORKERS", 4, "most lanes POST /scale_workers may ask for", ge=1)
    # Who may do what (flts.auth): events change what is served, /scale_workers the capacity.
    scale_token: Secret = knob("SCALE_WORKERS_TOKEN", "",
                               "bearer token POST /scale_workers needs; empty = EVENT_TOKEN's", repr=False)
    predict_api_key: Secret = knob("PREDICT_API_KEY", "",
                                   "bearer token POST /predict and the v2 infer route need; empty = open", repr=False)
    # Input bounds.
    max_body_bytes: int = knob("MAX_BODY_BYTES", 1024 * 1024, "largest request body", ge=256)
    body_read_seconds: float = knob("BODY_READ_SECONDS", 5.0,
                                    "longest wait for a request's whole body; slower → 408", gt=0)
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
                                 "requests naming no identifier get this identifier's champion; empty = the "
                                 "champion in current.json")
    artifact_buckets: CommaList = knob("ARTIFACT_BUCKETS", (),
                                       "comma-separated buckets infer loads model artifacts from besides "
                                       "PROMOTION_BUCKET; empty = PROMOTION_BUCKET only")
    max_clock_skew_seconds: float = knob("MAX_CLOCK_SKEW_SECONDS", 60.0,
                                         "a promotion dated further in the future than this is refused", ge=0)
    inference_log_bucket: str = knob("INFERENCE_LOG_BUCKET", "inference-logs",
                                     "bucket of the forecasts and metrics of inference-data jobs")
    # The fleet: champions of named identifiers, loaded on first use, held in an LRU with two bounds
    # (a count, because each ONNX Runtime session costs ~120 KB however small its graph; and bytes).
    max_models: int = knob("MAX_MODELS", 1000,
                           "identifiers whose champions are held at once; the least recently used is dropped first",
                           ge=1)
    max_model_bytes: int = knob("MAX_MODEL_BYTES", 256 * 1024 * 1024,
                                "artifact bytes of the held champions, the default's not counted; the least recently "
                                "used is dropped first; a larger model is refused", ge=1)
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
    def scale_workers_token(self) -> str:
        # `flts up` sets EVENT_TOKEN: /scale_workers is then closed without a token of its own.
        return self.scale_token or self.token

    @property
    def allowed_artifact_buckets(self) -> tuple[str, ...]:
        return (self.promotion_bucket, *self.artifact_buckets)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size if self.enable_microbatch else 1
