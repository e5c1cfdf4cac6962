"""Tests of flts.dev.infra against the REAL services (no mocks).

The session fixture ``infra`` starts Kafka, the S3 server, PostgreSQL and MLflow on
random free ports below the ephemeral range, with a temporary state dir, and stops them
at the end. Binaries come from ``bash infra/install.sh`` (cache ``$FLTS_CACHE``).

``test_zz_stop_all_leaves_no_process`` stops the session stack and starts it again.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from flts.dev import infra as fi
from flts.dev import processes

pytestmark = pytest.mark.stack


# --------------------------------------------------------------------------- config
def test_client_env_contract(infra):
    env = fi.client_env(infra)
    assert set(env) == {
        "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_SECURE",
        "MLFLOW_TRACKING_URI", "EVENT_TOKEN",
    }
    assert len(env["EVENT_TOKEN"]) >= 32 and env["EVENT_TOKEN"] == fi.event_token(infra)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{infra.kafka_port}"
    assert env["S3_ENDPOINT"] == f"127.0.0.1:{infra.s3_port}"
    assert env["S3_SECURE"] == "0"
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{infra.mlflow_port}"
    # credentials are generated once and stable
    assert fi.s3_credentials(infra) == (env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"])
    assert oct((infra.state_dir / "credentials.json").stat().st_mode & 0o777) == "0o600"


def test_an_older_credentials_file_gains_the_event_token_and_keeps_its_values(tmp_path):
    import json

    from flts.dev.infra.config import ensure_secrets

    cfg = fi.InfraConfig(state_dir=tmp_path / "state")
    cfg.state_dir.mkdir()
    old = {"s3_access_key": "fltsold", "s3_secret_key": "oldsecret", "pg_password": "oldpw"}
    (cfg.state_dir / "credentials.json").write_text(json.dumps(old))
    data = ensure_secrets(cfg)
    assert {k: data[k] for k in old} == old and len(data["event_token"]) >= 32
    assert ensure_secrets(cfg) == data  # generated once
    assert oct((cfg.state_dir / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in cfg.state_dir.iterdir() if "tmp" in p.name] == []


def test_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FLTS_STATE", str(tmp_path / "st"))
    monkeypatch.setenv("FLTS_KAFKA_PORT", "29092")
    monkeypatch.setenv("FLTS_S3_PORT", "29000")
    monkeypatch.setenv("FLTS_PG_PORT", "25432")
    monkeypatch.setenv("FLTS_MLFLOW_PORT", "25000")
    cfg = fi.InfraConfig()
    assert cfg.state_dir == (tmp_path / "st").resolve()
    assert (cfg.kafka_port, cfg.kafka_controller_port) == (29092, 29093)
    assert (cfg.s3_port, cfg.pg_port, cfg.mlflow_port) == (29000, 25432, 25000)
    assert cfg.buckets == fi.DEFAULT_BUCKETS
    assert "dlq-model-selected" in fi.DEFAULT_TOPICS and "dataset-ready" in fi.DEFAULT_TOPICS


# --------------------------------------------------------------------------- Kafka
def test_kafka_produce_consume_roundtrip(infra):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    bootstrap = fi.client_env(infra)["KAFKA_BOOTSTRAP_SERVERS"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        assert set(fi.DEFAULT_TOPICS) <= set(admin.list_topics())
    finally:
        admin.close()

    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"
    assert fi.create_topics(infra, [topic]) == [topic]
    assert fi.create_topics(infra, [topic]) == []  # idempotent

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    payloads = [f"event-{i}".encode() for i in range(5)]
    for p in payloads:
        producer.send(topic, key=b"k", value=p).get(timeout=30)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:6]}",  # exercises the group coordinator too
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        consumer_timeout_ms=1000,
    )
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(payloads) and time.monotonic() < deadline:
            for msg in consumer:
                got.append(msg.value)
    finally:
        consumer.close()
    assert got == payloads


# --------------------------------------------------------------------------- S3
def test_s3_put_get_and_buckets(infra):
    import io

    from minio import Minio

    env = fi.client_env(infra)
    client = Minio(env["S3_ENDPOINT"], access_key=env["S3_ACCESS_KEY"], secret_key=env["S3_SECRET_KEY"],
                   secure=env["S3_SECURE"] == "1")
    assert {b.name for b in client.list_buckets()} >= set(fi.DEFAULT_BUCKETS)
    body = os.urandom(100_000)
    key = f"tests/{uuid.uuid4().hex}/blob.bin"
    client.put_object("raw-data", key, io.BytesIO(body), len(body), content_type="application/octet-stream")
    resp = client.get_object("raw-data", key)
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()
    assert [o.object_name for o in client.list_objects("raw-data", prefix=key)] == [key]
    client.remove_object("raw-data", key)


def test_s3_store_size_is_a_head_and_put_file_streams(infra, tmp_path):
    from flts.storage import ObjectNotFound, store_from_env

    store = store_from_env(fi.client_env(infra))
    source = tmp_path / "upload.csv"
    source.write_bytes(os.urandom(6 * 1024 * 1024))  # above minio's multipart threshold of 5 MiB
    key = f"tests/{uuid.uuid4().hex}/upload.csv"
    store.put_file("raw-data", key, source, "text/csv")
    assert store.size("raw-data", key) == source.stat().st_size
    assert store.get_bytes("raw-data", key) == source.read_bytes()
    with pytest.raises(ObjectNotFound, match=rf"object not found: raw-data/{key}\.missing"):
        store.size("raw-data", key + ".missing")
    with pytest.raises(ObjectNotFound):
        store.size("no-such-bucket", "x.csv")


@pytest.mark.parametrize("which", ["secret", "access"])
def test_s3_wrong_credentials_refused(infra, which):
    import io

    from minio import Minio
    from minio.error import S3Error

    creds = fi.s3_credentials(infra)
    good = Minio(fi.s3_endpoint(infra), access_key=creds.access_key, secret_key=creds.secret_key, secure=False)
    key = f"tests/{uuid.uuid4().hex}/secret.txt"
    good.put_object("raw-data", key, io.BytesIO(b"top secret"), 10)

    access = creds.access_key if which == "secret" else "nobody" + creds.access_key[6:]
    secret = creds.secret_key if which == "access" else "0" * len(creds.secret_key)
    bad = Minio(fi.s3_endpoint(infra), access_key=access, secret_key=secret, secure=False)
    # versitygw: 403 SignatureDoesNotMatch (wrong secret), 404 XAdminUserNotFound (unknown key)
    refused = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "XAdminUserNotFound"}
    with pytest.raises(S3Error) as ei:
        bad.list_buckets()
    assert ei.value.code in refused, ei.value
    with pytest.raises(S3Error) as ei:
        bad.get_object("raw-data", key)
    assert ei.value.code in refused, ei.value
    with pytest.raises(S3Error) as ei:
        bad.put_object("raw-data", key, io.BytesIO(b"overwrite!"), 10)
    assert ei.value.code in refused, ei.value
    resp = good.get_object("raw-data", key)
    try:
        assert resp.read() == b"top secret"
    finally:
        resp.close()
        resp.release_conn()
    good.remove_object("raw-data", key)


# --------------------------------------------------------------------------- MLflow
def test_mlflow_run_artifact_lands_in_s3(infra, tmp_path):
    import mlflow
    from minio import Minio

    uri = fi.client_env(infra)["MLFLOW_TRACKING_URI"]
    code, body = processes.http_get(f"{uri}/health")
    assert code == 200 and "OK" in body

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(f"flts-infra-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id, tags={"config_hash": "abc123"})
    run_id = run.info.run_id
    client.log_param(run_id, "model_type", "GRU")
    client.log_metric(run_id, "rmse", 1.25)
    payload = os.urandom(4096)
    art = tmp_path / "weights.bin"
    art.write_bytes(payload)
    client.log_artifact(run_id, str(art), artifact_path="GRU")
    client.set_terminated(run_id)

    # stored in PostgreSQL: a fresh client reads it back
    got = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert got.data.params["model_type"] == "GRU" and got.data.metrics["rmse"] == 1.25
    assert [f.path for f in client.list_artifacts(run_id, "GRU")] == ["GRU/weights.bin"]

    # the bytes are in the S3 server's `mlflow` bucket (the server proxies artifacts)
    creds = fi.s3_credentials(infra)
    s3 = Minio(fi.s3_endpoint(infra), access_key=creds.access_key, secret_key=creds.secret_key, secure=False)
    keys = [o.object_name for o in s3.list_objects("mlflow", prefix="artifacts/", recursive=True)]
    mine = [k for k in keys if run_id in k and k.endswith("GRU/weights.bin")]
    assert mine, keys
    resp = s3.get_object("mlflow", mine[0])
    try:
        assert resp.read() == payload
    finally:
        resp.close()
        resp.release_conn()

    # and download through MLflow returns the same bytes
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="GRU/weights.bin", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    assert Path(local).read_bytes() == payload


# --------------------------------------------------------------------------- lifecycle
def test_status_and_idempotent_start(infra):
    before = {r["name"]: r for r in fi.status(infra)}
    assert set(before) == {"kafka", "s3", "postgres", "mlflow"}
    assert all(r["healthy"] and r["pid"] for r in before.values()), before
    t0 = time.monotonic()
    fi.start_all(infra)  # reuse: no restart
    assert time.monotonic() - t0 < 15
    after = {r["name"]: r["pid"] for r in fi.status(infra)}
    assert after == {n: r["pid"] for n, r in before.items()}
    for name in ("kafka", "s3", "postgres", "mlflow"):
        assert infra.pid_file(name).exists() and infra.log_file(name).exists()
    # a running service is not silently "reused" on another port
    with pytest.raises(fi.InfraError, match="already runs"):
        fi.start_s3(infra.replace(s3_port=infra.s3_port + 1))


@pytest.mark.parametrize(
    "service, field, env",
    [
        ("kafka", "kafka_port", "FLTS_KAFKA_PORT"),
        ("s3", "s3_port", "FLTS_S3_PORT"),
        ("postgres", "pg_port", "FLTS_PG_PORT"),
        ("mlflow", "mlflow_port", "FLTS_MLFLOW_PORT"),
    ],
)
def test_port_taken_by_foreign_socket(service, field, env):
    base = fi.ephemeral_config()
    state = base.state_dir
    foreign = socket.socket()
    try:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen(1)
        port = foreign.getsockname()[1]
        cfg = base.replace(**{field: port})
        start = {"kafka": fi.start_kafka, "s3": fi.start_s3, "postgres": fi.start_postgres,
                 "mlflow": fi.start_mlflow}[service]
        with pytest.raises(fi.InfraError) as ei:
            start(cfg)
        msg = str(ei.value)
        assert f"port {port} is in use by another process; set {env}" in msg
        assert not cfg.pid_file(service).exists()
    finally:
        foreign.close()
        fi.stop_all(fi.InfraConfig(state_dir=state))
        shutil.rmtree(state, ignore_errors=True)


def _descendants(pids: set[int]) -> set[int]:
    """pids plus every process whose parent chain or process group leads to one of them."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                procs[int(d)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
            except (OSError, IndexError, ValueError):
                pass
    out = set(pids)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, pgid) in procs.items():
            if pid not in out and (ppid in out or pgid in pids):
                out.add(pid)
                changed = True
    return out


def test_zz_stop_all_leaves_no_process(infra):
    """Stops the session's stack, checks that nothing is left behind, then starts it again
    (so a shared session fixture still serves the tests that run after this one)."""
    pids = {r["pid"] for r in fi.status(infra) if r["pid"]}
    assert len(pids) == 4
    every = _descendants(pids)
    assert len(every) > 4  # postgres backends, the MLflow uvicorn worker ...
    try:
        stopped = fi.stop_all(infra)
        assert sorted(stopped) == ["kafka", "mlflow", "postgres", "s3"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(processes.pid_alive(p) for p in every):
            time.sleep(0.1)
        assert [p for p in every if processes.pid_alive(p)] == []
        for port in (infra.kafka_port, infra.kafka_controller_port, infra.s3_port, infra.pg_port,
                     infra.mlflow_port):
            assert not processes.port_in_use(infra.host, port), port
        assert all(not r["pid"] and not r["healthy"] for r in fi.status(infra))
        assert fi.stop_all(infra) == []  # idempotent
    finally:
        fi.start_all(infra)  # warm restart from the same state dir
    assert all(r["healthy"] for r in fi.status(infra))


# --------------------------------------------------------------------------- flts upload's refusals
# (no service is contacted: the checks come before the upload)
@pytest.mark.parametrize("identifier", ["../x", "a//b", "."])
def test_upload_with_a_bad_identifier_is_a_one_line_error(identifier, monkeypatch, tmp_path, capsys):
    from flts.cli import main

    monkeypatch.setenv("FLTS_STATE", str(tmp_path / "state"))
    csv = tmp_path / "site.csv"
    csv.write_text("time,down\n2020-01-01 00:00,1\n")
    assert main(["upload", str(csv), "--identifier", identifier, "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid identifier {identifier!r}: object key") and err.count("\n") == 1
    assert "Traceback" not in err


def test_upload_refuses_a_file_over_max_upload_bytes_before_sending_it(monkeypatch, tmp_path, capsys):
    from flts.cli import main

    monkeypatch.setenv("FLTS_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "100")
    csv = tmp_path / "site.csv"
    csv.write_bytes(b"time,down\n" + b"2020-01-01 00:00,1\n" * 10)
    assert main(["upload", str(csv), "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {csv}: {csv.stat().st_size} bytes is over the limit of 100 (MAX_UPLOAD_BYTES); " \
                  "preprocess would refuse it\n"
