"""Run the inference app under uvicorn (httptools parser, uvloop event loop).

    python -m flts.infer serve --port 8080 [--workers 2]
    uvicorn functions.infer.main:app --http httptools --loop uvloop   # the same app

With --workers > 1, uvicorn runs that many processes on one socket and the Prometheus
samples of all of them are summed (PROMETHEUS_MULTIPROC_DIR, set here when unset).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from flts.logs import configure

APP_FACTORY = "flts.infer.app:create_app"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flts.infer serve", description="serve the inference function")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")),
                        help="uvicorn worker processes (default: WEB_CONCURRENCY or 1)")
    parser.add_argument("--log-level", default=os.environ.get("UVICORN_LOG_LEVEL", "warning"))
    return parser


def serve(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(os.environ, component="infer")  # each uvicorn worker inherits the environment it reads
    own_metrics_dir = args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if own_metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flts-prom-")
    import uvicorn

    try:
        uvicorn.run(
            APP_FACTORY, factory=True, host=args.host, port=args.port, workers=args.workers,
            loop="uvloop", http="httptools", lifespan="on", access_log=False, log_level=args.log_level,
            backlog=4096, timeout_keep_alive=30, timeout_graceful_shutdown=20,
            proxy_headers=False,  # nothing reads the client address; the middleware costs every request
        )
    finally:
        if own_metrics_dir:  # the samples die with the workers; leave no folder behind
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    return 0
