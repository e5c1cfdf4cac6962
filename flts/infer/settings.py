"""Serving knobs, read once from the environment (names kept from the original FLTS)."""
from __future__ import annotations

from dataclasses import dataclass

from flts.promotion import promotion_bucket
from flts.settings import ConfigError, Env, env_bool, env_int, env_str


@dataclass(frozen=True)
class ServingSettings:
    # Backpressure: MAX_INFLIGHT is the function's own concurrency limit (Knative
    # containerConcurrency / OpenFaaS max_inflight use the same number).
    max_inflight: int = 64
    queue_maxsize: int = 256
    enable_ttl: bool = False
    ttl_ms: int = 1000
    retry_after_seconds: int = 1
    # Micro-batching: concurrent requests share one ONNX run.
    enable_microbatch: bool = True
    batch_size: int = 32
    batch_timeout_ms: float = 0.0
    # Inference lanes (POST /scale_workers resizes them within [1, max_workers]).
    workers: int = 1
    max_workers: int = 4
    scale_token: str = ""
    # Input bounds.
    max_body_bytes: int = 1024 * 1024
    max_rows: int = 10_000
    # ONNX Runtime threads: 1 intra-op thread per session is fastest for small recurrent
    # models on a 2-core box (see docs/inference.md for the measurement).
    ort_intra_op_threads: int = 1
    ort_inter_op_threads: int = 1
    # Where models and results live.
    promotion_bucket: str = "model-promotion"
    model_identifier: str = ""
    inference_log_bucket: str = "inference-logs"
    max_models: int = 4
    require_model: bool = False
    # Hot-path log lines (`queue_enqueued`, `predict_inference_start`) per key per second.
    log_lines_per_second: int = 5

    @classmethod
    def from_env(cls, env: Env) -> ServingSettings:
        settings = cls(
            max_inflight=env_int(env, "MAX_INFLIGHT", cls.max_inflight, minimum=1),
            queue_maxsize=env_int(env, "QUEUE_MAXSIZE", cls.queue_maxsize, minimum=1),
            enable_ttl=env_bool(env, "ENABLE_TTL", cls.enable_ttl),
            ttl_ms=env_int(env, "REQUEST_TTL_MS", cls.ttl_ms, minimum=1),
            retry_after_seconds=env_int(env, "RETRY_AFTER_SECONDS", cls.retry_after_seconds, minimum=1),
            enable_microbatch=env_bool(env, "ENABLE_MICROBATCH", cls.enable_microbatch),
            batch_size=env_int(env, "BATCH_SIZE", cls.batch_size, minimum=1),
            batch_timeout_ms=float(env_int(env, "BATCH_TIMEOUT_MS", int(cls.batch_timeout_ms), minimum=0)),
            workers=env_int(env, "INFER_WORKERS", cls.workers, minimum=1),
            max_workers=env_int(env, "MAX_WORKERS", cls.max_workers, minimum=1),
            scale_token=env_str(env, "SCALE_WORKERS_TOKEN", ""),
            max_body_bytes=env_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=256),
            max_rows=env_int(env, "MAX_ROWS", cls.max_rows, minimum=1),
            ort_intra_op_threads=env_int(env, "ORT_INTRA_OP_THREADS", cls.ort_intra_op_threads, minimum=0),
            ort_inter_op_threads=env_int(env, "ORT_INTER_OP_THREADS", cls.ort_inter_op_threads, minimum=0),
            promotion_bucket=promotion_bucket(env),
            model_identifier=env_str(env, "MODEL_IDENTIFIER", ""),
            inference_log_bucket=env_str(env, "INFERENCE_LOG_BUCKET", cls.inference_log_bucket),
            max_models=env_int(env, "MAX_MODELS", cls.max_models, minimum=1),
            require_model=env_bool(env, "REQUIRE_MODEL", cls.require_model),
            log_lines_per_second=env_int(env, "HOT_LOG_LINES_PER_SECOND", cls.log_lines_per_second, minimum=0),
        )
        if settings.workers > settings.max_workers:
            raise ConfigError(f"INFER_WORKERS ({settings.workers}) must be <= MAX_WORKERS ({settings.max_workers})")
        return settings

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size if self.enable_microbatch else 1
