"""The S3 server: versitygw on a posix folder (s3proxy, a Java jar, as the fallback)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from flts.dev import processes
from flts.dev.infra import service
from flts.dev.infra.config import InfraConfig, InfraError, S3Credentials, s3_credentials, s3_endpoint, say


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
        cmd = [str(vgw), "--port", f"{cfg.host}:{cfg.s3_port}", "--region", "us-east-1", "posix"]
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
