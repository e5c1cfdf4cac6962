"""The gateway's knobs (docs/contracts.md, "The gateway")."""
from __future__ import annotations

from flts.settings import ProcessedBucket, PromotionBucket, knob

DEFAULT_MAX_INFLIGHT = 64  # the same default as infer's: one knob, one default (tests/test_settings.py)


class GatewaySettings(ProcessedBucket, PromotionBucket):
    token: str = knob("GATEWAY_TOKEN", "", "bearer token upload and download require; empty = EVENT_TOKEN's "
                                           "(both empty = open); /pipelines and the page stay open", repr=False)
    raw_bucket: str = knob("RAW_BUCKET", "raw-data", "bucket the gateway streams uploads into")
    inference_log_bucket: str = knob("INFERENCE_LOG_BUCKET", "inference-logs",
                                     "bucket of the batch forecasts (served by GET /download/inference/...)")
    max_bytes: int = knob("MAX_UPLOAD_BYTES", 200 * 1024 * 1024, "a larger raw file is refused", ge=1)
    max_inflight: int = knob("MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, "requests served at once; beyond them 429", ge=1)
    tracking_uri: str = knob("MLFLOW_TRACKING_URI", "", "MLflow tracking URI; empty = MLflow's own default (./mlruns)")
    experiment_name: str = knob("MLFLOW_EXPERIMENT_NAME", "", "MLflow experiment; empty = flts-<identifier>")
    # the dispatcher requires it; the gateway only reads the dead letters with it
    kafka: str = knob("KAFKA_BOOTSTRAP_SERVERS", "", "Kafka, read for the dead letters (dlq-*); empty = none shown")
    sink_timeout: float = knob("GATEWAY_SINK_TIMEOUT_SEC", 12.0, "seconds to wait for K_SINK to take the event; "
                                                               "then 503", gt=0)
    retry_after: int = knob("GATEWAY_RETRY_AFTER_SECONDS", 5, "Retry-After of a 503 (events cannot be written) or 429", ge=1)
