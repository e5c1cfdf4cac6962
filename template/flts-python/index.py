"""Entry point of every FLTS function image (the OpenFaaS template `flts-python`).

OpenFaaS: of-watchdog (http mode) starts this as `fprocess` and proxies :8080 to
`upstream_url` (http://127.0.0.1:5000), answering 429 beyond `max_inflight`.
Knative: the Service runs it directly, `python /app/index.py --listen 0.0.0.0:8080`.
Either way it replaces itself with the function's own HTTP server, run from the handler
folder (functions/<name>/, the working directory): FLTS_FUNCTION names the function, and
its spec (flts.<function>.SPEC) says which server runs which entry point of main.py.

OpenFaaS mounts secrets as files in /var/openfaas/secrets/, but the code reads settings
from the environment only: each secret file becomes a variable first (`event-token` →
EVENT_TOKEN), unless the variable is already set. A secret named for this function is its
own value of the variable (`s3-access-key-train` → S3_ACCESS_KEY where FLTS_FUNCTION=train:
each function has an S3 account of its own) and wins over a shared one of the same name.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlsplit

SECRETS_DIR = Path("/var/openfaas/secrets")


def _is_own(secret: str, function: str) -> bool:
    return bool(function) and secret.endswith(f"-{function}")


def env_name(secret: str, function: str) -> str:
    """The variable a secret file sets: `s3-access-key` and this function's `s3-access-key-<function>` → S3_ACCESS_KEY."""
    if _is_own(secret, function):
        secret = secret.removesuffix(f"-{function}")
    return secret.upper().replace("-", "_")


def secrets_to_env(directory: Path, env: MutableMapping[str, str], function: str = "") -> list[str]:
    """Load each secret file into `env` (the function's own ones first); returns the variable names it set."""
    loaded = []
    if not directory.is_dir():
        return loaded
    # Kubernetes mounts secrets through `..data` symlinks: skip the dot entries.
    files = [p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file()]
    for path in sorted(files, key=lambda p: (not _is_own(p.name, function), p.name)):
        name = env_name(path.name, function)
        if name not in env:
            env[name] = path.read_text().rstrip("\r\n")
            loaded.append(name)
    return loaded


def listen_address(listen: str | None, env: MutableMapping[str, str]) -> tuple[str, int]:
    """HOST:PORT from --listen, else from of-watchdog's upstream_url."""
    raw = listen or urlsplit(env.get("upstream_url", "")).netloc
    host, _, port = raw.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"index.py: need --listen HOST:PORT or upstream_url=http://HOST:PORT, got {raw!r}")
    return host or "0.0.0.0", int(port)


def server_command(function: str, host: str, port: int) -> list[str]:
    """The server the function's spec names, serving ./main.py on host:port."""
    from flts.routing import function_spec

    if not function:
        raise SystemExit("index.py: FLTS_FUNCTION is not set (the function this image runs: its folder name)")
    try:
        spec = function_spec(function)
    except KeyError as exc:
        raise SystemExit(f"index.py: FLTS_FUNCTION: {exc.args[0]}") from None
    return spec.server_command(host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", help="HOST:PORT (default: upstream_url, i.e. behind of-watchdog)")
    args = parser.parse_args(argv)
    secrets_to_env(SECRETS_DIR, os.environ, os.environ.get("FLTS_FUNCTION", ""))
    host, port = listen_address(args.listen, os.environ)
    command = server_command(os.environ.get("FLTS_FUNCTION", ""), host, port)
    sys.stdout.flush()
    # exec: the server gets the signals (the watchdog's or the kubelet's SIGTERM) directly.
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
