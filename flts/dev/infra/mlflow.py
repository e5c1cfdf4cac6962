"""The MLflow tracking server: runs in PostgreSQL, artifacts proxied to the S3 server's `mlflow` bucket."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from flts.dev import processes
from flts.dev.infra import service
from flts.dev.infra.config import (
    InfraConfig,
    InfraError,
    mlflow_backend_uri,
    mlflow_uri,
    pg_password,
    s3_credentials,
    s3_endpoint,
)

ARTIFACTS_DESTINATION = "s3://mlflow/artifacts"


def probe(cfg: InfraConfig) -> bool:
    """/health answers, and so does a real API call (it needs the database)."""
    if not processes.port_open(cfg.host, cfg.mlflow_port):
        return False
    base = mlflow_uri(cfg)
    code, _ = processes.http_get(f"{base}/health")
    if code != 200:
        return False
    # /health skips host validation and the database: check a real API call too
    code, _ = processes.http_get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default")
    return code == 200


def _mlflow_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "mlflow"]


def _server_env(cfg: InfraConfig) -> dict[str, str]:
    creds = s3_credentials(cfg)
    return {
        "MLFLOW_S3_ENDPOINT_URL": f"http://{s3_endpoint(cfg)}",
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PGPASSWORD": pg_password(cfg),  # keeps the password off the command line
        "MLFLOW_TRACKING_URI": "",
        "PYTHONUNBUFFERED": "1",
        # MLflow 3's job runner (huey consumers for GenAI jobs) adds ~8 processes, ~600 MB
        # and ~15 s of startup on 2 cores; this project does not use it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }


@service.locked("mlflow")
def start_mlflow(cfg: InfraConfig) -> int:
    """Start the MLflow tracking server on PostgreSQL with proxied S3 artifacts."""
    return service.ensure_started(cfg, "mlflow", mlflow_uri(cfg), lambda: probe(cfg),
                                  [(cfg.mlflow_port, "FLTS_MLFLOW_PORT")], lambda: _launch(cfg))


def _launch(cfg: InfraConfig) -> int:
    # the server needs boto3 for s3:// artifacts and psycopg2 for PostgreSQL (not imported
    # here: importing mlflow costs seconds of CPU that the starting services need)
    missing = [m for m in ("mlflow", "boto3", "psycopg2") if importlib.util.find_spec(m) is None]
    if missing:
        raise InfraError(f"mlflow: missing Python packages {missing}; install flts[stack]")
    cmd = _mlflow_cmd() + [
        "server",
        "--backend-store-uri", mlflow_backend_uri(cfg),
        "--artifacts-destination", ARTIFACTS_DESTINATION,
        "--host", cfg.host,
        "--port", str(cfg.mlflow_port),
        "--workers", "1",
    ]
    processes.log_mark(cfg.log_file("mlflow"), "mlflow")
    return service.launch(cfg, "mlflow", cmd, lambda: probe(cfg), mlflow_uri(cfg), env=_server_env(cfg))
