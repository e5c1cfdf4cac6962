"""Local full stack on one machine, without Docker: Kafka (KRaft), an S3 server,
PostgreSQL and an MLflow server, all bound to 127.0.0.1.

Binaries come from ``infra/install.sh`` (cache ``$FLTS_CACHE``, default ``~/.cache/flts``);
this package starts, probes and stops them. Every service keeps its data, pid file and log
under the state dir (``$FLTS_STATE``, default ``<repo>/.flts``)::

    from flts.dev import infra
    cfg = infra.InfraConfig()          # ports etc. from FLTS_* env vars
    infra.start_all(cfg)               # idempotent: reuses healthy services
    os.environ.update(infra.client_env(cfg))
    ...
    infra.stop_all(cfg)

or from a shell: ``python -m flts.dev.infra up|down|status|env``.

Layout: ``config`` (InfraConfig, credentials, endpoints, ports), ``service`` (what every
service shares: pid file, lock, start checks, wait until ready, stop), one module per
service (``kafka``, ``s3``, ``postgres``, ``mlflow``), ``lifecycle`` (all four together)
and ``cli``. Processes are started and stopped with flts.dev.processes.
"""
from flts.dev.infra.cli import main
from flts.dev.infra.config import (
    DEFAULT_BUCKETS,
    DEFAULT_TOPICS,
    SERVICES,
    InfraConfig,
    InfraError,
    S3Credentials,
    client_env,
    ephemeral_config,
    event_token,
    free_port_pair,
    function_env,
    function_s3_credentials,
    kafka_bootstrap,
    mlflow_backend_uri,
    mlflow_uri,
    pg_dsn,
    pg_password,
    s3_credentials,
    s3_endpoint,
)
from flts.dev.infra.kafka import create_topics, start_kafka
from flts.dev.infra.lifecycle import start_all, status, stop_all
from flts.dev.infra.mlflow import ARTIFACTS_DESTINATION as MLFLOW_ARTIFACTS_DESTINATION
from flts.dev.infra.mlflow import start_mlflow
from flts.dev.infra.postgres import start_postgres
from flts.dev.infra.s3 import GRANTS, create_buckets, start_s3
from flts.dev.infra.service import stop_service

__all__ = [
    "DEFAULT_BUCKETS", "DEFAULT_TOPICS", "GRANTS", "MLFLOW_ARTIFACTS_DESTINATION", "SERVICES",
    "InfraConfig", "InfraError", "S3Credentials",
    "client_env", "create_buckets", "create_topics", "ephemeral_config", "event_token", "free_port_pair",
    "function_env", "function_s3_credentials", "kafka_bootstrap",
    "main", "mlflow_backend_uri", "mlflow_uri", "pg_dsn", "pg_password", "s3_credentials", "s3_endpoint",
    "start_all", "start_kafka", "start_mlflow", "start_postgres", "start_s3", "status", "stop_all",
    "stop_service",
]
