"""The S3 server: versitygw on a posix folder (s3proxy, a Java jar, as the fallback).

Least privilege (versitygw only): the server runs its internal IAM (`--iam-dir`), every
function gets an account of its own (role `user`: it owns no bucket, so it may do nothing a
bucket policy does not grant), and each bucket's policy grants each function what GRANTS
says. The root account stays with the infrastructure: creating buckets, MLflow's artifact
store, `flts upload`. s3proxy has no accounts: there every function uses the root credentials.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from flts.dev import processes
from flts.dev.infra import service
from flts.dev.infra.config import (
    InfraConfig,
    InfraError,
    S3Credentials,
    function_s3_credentials,
    iam_dir,
    s3_credentials,
    s3_endpoint,
    say,
)

READ, WRITE = "read", "write"  # write includes read: a function checks what it already wrote
# Function → bucket → access; anything not listed is refused (AccessDenied). Train reads and
# writes model artifacts through the MLflow server (proxied artifacts), never the mlflow bucket.
GRANTS: dict[str, dict[str, str]] = {
    "preprocess": {"raw-data": READ, "processed-data": WRITE},
    "train": {"processed-data": READ},
    "eval": {"processed-data": READ, "model-promotion": WRITE},
    "infer": {"model-promotion": READ, "processed-data": READ, "inference-logs": WRITE},
    # uploads go into raw-data; downloads and the status read the outputs
    "gateway": {"raw-data": WRITE, "processed-data": READ, "model-promotion": READ, "inference-logs": READ},
}
BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation"]  # list, HEAD bucket, the SDK's region lookup
OBJECT_ACTIONS = {READ: ["s3:GetObject"], WRITE: ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]}


def _client(cfg: InfraConfig, creds: S3Credentials | None = None):
    from minio import Minio

    creds = creds or s3_credentials(cfg)
    return Minio(s3_endpoint(cfg), access_key=creds.access_key, secret_key=creds.secret_key, secure=False)


def probe(cfg: InfraConfig) -> bool:
    """list_buckets with the root credentials succeeds (raises while the server warms up)."""
    if not processes.port_open(cfg.host, cfg.s3_port):
        return False
    import urllib3
    from minio import Minio

    creds = s3_credentials(cfg)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
    Minio(s3_endpoint(cfg), creds.access_key, creds.secret_key, secure=False, http_client=http).list_buckets()
    return True


def _xattr_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.flts.probe", b"1")
        os.removexattr(path, "user.flts.probe")
        return True
    except OSError:
        return False


def _server_cmd(cfg: InfraConfig, creds: S3Credentials) -> tuple[list[str], dict[str, str]]:
    """(command, extra env) of the S3 server that is installed."""
    sdir = cfg.service_dir("s3")
    data = sdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    vgw = cfg.cache_dir / "bin" / "versitygw"
    s3proxy = cfg.cache_dir / "s3proxy" / "s3proxy.jar"
    impl = os.environ.get("FLTS_S3_SERVER", "")
    if impl != "s3proxy" and vgw.exists():
        iam = iam_dir(cfg)
        iam.mkdir(mode=0o700, exist_ok=True)  # the accounts' secrets live here
        cmd = [str(vgw), "--port", f"{cfg.host}:{cfg.s3_port}", "--region", "us-east-1", "--iam-dir", str(iam),
               "posix"]
        if not _xattr_supported(data):  # versitygw keeps object metadata in xattrs, else in a sidecar dir
            (sdir / "meta").mkdir(exist_ok=True)
            cmd += ["--sidecar", str(sdir / "meta")]
        cmd.append(str(data))
        # credentials by environment: they never appear on a command line
        return cmd, {"ROOT_ACCESS_KEY": creds.access_key, "ROOT_SECRET_KEY": creds.secret_key}
    if s3proxy.exists():
        conf = sdir / "s3proxy.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                f"s3proxy.endpoint=http://{cfg.host}:{cfg.s3_port}\n"
                "s3proxy.authorization=aws-v2-or-v4\n"
                f"s3proxy.identity={creds.access_key}\n"
                f"s3proxy.credential={creds.secret_key}\n"
                "jclouds.provider=filesystem\n"
                f"jclouds.filesystem.basedir={data}\n"
            )
        java = shutil.which("java") or "java"
        return [java, "-Xmx256m", "-jar", str(s3proxy), "--properties", str(conf)], {}
    raise InfraError(f"no S3 server found ({vgw} or {s3proxy}): run `bash infra/install.sh` first")


@service.locked("s3")
def start_s3(cfg: InfraConfig) -> int:
    """Start the S3 server (versitygw posix backend; s3proxy fallback) and create the buckets."""
    pid = service.ensure_started(cfg, "s3", f"http://{s3_endpoint(cfg)}", lambda: probe(cfg),
                                 [(cfg.s3_port, "FLTS_S3_PORT")], lambda: _launch(cfg))
    create_buckets(cfg)
    if iam_dir(cfg).is_dir():
        grant_functions(cfg)
    return pid


def _launch(cfg: InfraConfig) -> int:
    cmd, env = _server_cmd(cfg, s3_credentials(cfg))
    processes.log_mark(cfg.log_file("s3"), "s3")
    server = "s3proxy" if "java" in cmd[0] else Path(cmd[0]).name
    return service.launch(cfg, "s3", cmd, lambda: probe(cfg), f"http://{s3_endpoint(cfg)} ({server})", env=env)


def create_buckets(cfg: InfraConfig, names: list[str] | None = None) -> list[str]:
    """Create the missing buckets (idempotent); return the names that were created."""
    client = _client(cfg)
    made = []
    for b in (cfg.buckets if names is None else names):
        if not client.bucket_exists(b):
            client.make_bucket(b)
            made.append(b)
    if made:
        say(f"s3: created buckets {', '.join(made)}")
    return made


def bucket_policies(cfg: InfraConfig) -> dict[str, dict]:
    """Bucket → its policy: one statement pair per function GRANTS lets in."""
    policies: dict[str, dict] = {}
    for function, buckets in GRANTS.items():
        principal = {"AWS": [function_s3_credentials(cfg, function).access_key]}
        for bucket, access in buckets.items():
            statements = policies.setdefault(bucket, {"Version": "2012-10-17", "Statement": []})["Statement"]
            statements += [
                {"Sid": f"{function}-bucket", "Effect": "Allow", "Principal": principal,
                 "Action": BUCKET_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}"]},
                {"Sid": f"{function}-objects-{access}", "Effect": "Allow", "Principal": principal,
                 "Action": OBJECT_ACTIONS[access], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
            ]
    return policies


def grant_functions(cfg: InfraConfig) -> None:
    """Create each function's account (idempotent) and put every bucket's policy."""
    for function in GRANTS:
        _create_account(cfg, function_s3_credentials(cfg, function))
    client = _client(cfg)
    for bucket, policy in bucket_policies(cfg).items():
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        client.set_bucket_policy(bucket, json.dumps(policy))


def _create_account(cfg: InfraConfig, account: S3Credentials) -> None:
    """`versitygw admin create-user` (the server's admin API); an existing account is kept."""
    root = s3_credentials(cfg)
    command = [str(cfg.cache_dir / "bin" / "versitygw"), "admin", "--endpoint-url", f"http://{s3_endpoint(cfg)}",
               "create-user", "--access", account.access_key, "--secret", account.secret_key, "--role", "user"]
    # the admin's own credentials by environment; the new account's secret has to be an argument
    env = {**os.environ, "ADMIN_ACCESS_KEY": root.access_key, "ADMIN_SECRET_KEY": root.secret_key}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    if done.returncode != 0 and "XAdminUserExists" not in output:
        raise InfraError(f"s3: cannot create the account {account.access_key}: {output.strip()}")
