"""Structured JSON-line logs.

Dashboards read the `event` key (`skip_idempotent`, `train_success_publish`,
`promotion_scoreboard`, `promotion_artifacts_ok`, `queue_enqueued`,
`predict_inference_start`, ...), so call sites pass it as the first argument.
"""
from __future__ import annotations

import sys
import threading
import time

import orjson

_lock = threading.Lock()
_component = "flts"


def set_component(name: str) -> None:
    """Name the process (function or tool) that every following line comes from."""
    global _component
    _component = name


def log(event: str, level: str = "info", **fields) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "component": _component, "event": event}
    record.update(fields)
    line = orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    with _lock:
        sys.stderr.buffer.write(line + b"\n")
        sys.stderr.buffer.flush()


def warn(event: str, **fields) -> None:
    log(event, level="warning", **fields)


def error(event: str, **fields) -> None:
    log(event, level="error", **fields)
