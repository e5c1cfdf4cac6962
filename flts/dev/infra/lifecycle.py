"""The four services together: start_all, stop_all, status."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from flts.dev.infra import kafka, mlflow, postgres, s3, service
from flts.dev.infra.config import (
    SERVICES,
    InfraConfig,
    InfraError,
    ensure_secrets,
    ensure_state_dir,
    kafka_bootstrap,
    mlflow_uri,
    s3_endpoint,
    say,
)


def start_all(cfg: InfraConfig | None = None, topics: list[str] | None = None) -> InfraConfig:
    """Start every service and create the topics; return the config.

    Kafka (JVM) and the S3 server start in threads while PostgreSQL then MLflow (the slow
    one: it needs PostgreSQL, not S3, to start) start in this thread.
    """
    cfg = cfg or InfraConfig()
    ensure_state_dir(cfg)
    ensure_secrets(cfg)  # generate once, before any thread reads it
    t0 = time.monotonic()
    errors: list[BaseException] = []

    def job(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported below
                errors.append(exc)
        return run

    def kafka_and_topics() -> None:
        from flts.dev.scaling import ScaleSettings  # the stack's partition count, so `flts up` need not grow them

        kafka.start_kafka(cfg)
        kafka.create_topics(cfg, cfg.topics if topics is None else topics,
                            partitions=ScaleSettings.from_env(os.environ).partitions)

    threads = [
        threading.Thread(target=job(kafka_and_topics), name="flts-kafka", daemon=True),
        threading.Thread(target=job(lambda: s3.start_s3(cfg)), name="flts-s3", daemon=True),
    ]
    for th in threads:
        th.start()
    try:
        postgres.start_postgres(cfg)
        mlflow.start_mlflow(cfg)
    except BaseException as exc:
        errors.append(exc)
    for th in threads:
        th.join()
    if errors:
        msgs = "\n".join(str(e) for e in errors)
        raise InfraError(f"start_all failed:\n{msgs}") from errors[0]
    say(f"infra: all services ready in {time.monotonic() - t0:.1f}s (state {cfg.state_dir})")
    return cfg


def stop_all(cfg: InfraConfig | None = None) -> list[str]:
    """Stop every service (MLflow first, PostgreSQL last); return the names that ran."""
    cfg = cfg or InfraConfig()
    return [n for n in ("mlflow", "kafka", "s3", "postgres") if service.stop_service(cfg, n)]


def status(cfg: InfraConfig | None = None) -> list[dict]:
    """One dict(name, pid, url, healthy) per service; pid None when not running."""
    cfg = cfg or InfraConfig()
    checks = {
        "kafka": (kafka_bootstrap(cfg), lambda: kafka.probe(cfg, 2000)),
        "s3": (f"http://{s3_endpoint(cfg)}", lambda: s3.probe(cfg)),
        "postgres": (f"postgresql://{cfg.pg_user}@{cfg.host}:{cfg.pg_port}/{cfg.pg_database}",
                     lambda: postgres.probe(cfg)),
        "mlflow": (mlflow_uri(cfg), lambda: mlflow.probe(cfg)),
    }
    out = []
    for name in SERVICES:
        url, probe = checks[name]
        pid = service.read_pid(cfg, name)
        healthy = False
        if pid is not None:
            try:
                healthy = bool(probe())
            except Exception:
                healthy = False
        out.append({"name": name, "pid": pid, "url": url, "healthy": healthy})
    return out
