"""Structured logs through the standard `logging` module.

Dashboards read the `event` key (`skip_idempotent`, `train_success_publish`,
`promotion_scoreboard`, `promotion_artifacts_ok`, `queue_enqueued`,
`predict_inference_start`, ...), so call sites pass it as the first argument:

    log("train_success_publish", model_type="GRU", run_id=run_id)
    warn("model_not_loaded", error=...)        # error(...) likewise

Each entry point (functions/*/main.py, the dispatcher, the `flts` CLI) calls
`configure(os.environ, component=...)` once; it reads

- LOG_LEVEL: DEBUG, INFO (default), WARNING, ERROR or CRITICAL, for flts' own lines. Other
  libraries' loggers (mlflow, cmdstanpy, prophet, urllib3, kafka, ...) go through the same
  handler from WARNING up, or from DEBUG up when LOG_LEVEL=DEBUG.
- LOG_FORMAT: `json` (default): one object a line with `ts`, `level`, `component`, `event`,
  then the call's fields; `text`: `12:01:02 train-gru     train_success_publish run_id=...`.

A process that logs before configuring (a test, a notebook) is configured from os.environ
by its first line, as `logging.info` calls `basicConfig`.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Literal

import orjson
from pydantic import BeforeValidator

from flts.settings import Env, Settings, knob

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
# Libraries that install their own stderr handler or level when imported: routed to ours.
THIRD_PARTY = ("mlflow", "alembic", "cmdstanpy", "prophet", "urllib3", "kafka")
COMPONENT_WIDTH = len("train-prophet")  # the longest deployment name: text columns line up

_logger = logging.getLogger("flts")
_component = "flts"
_configured = False


def set_component(name: str) -> None:
    """Name the process (function or tool) that every following line comes from."""
    global _component
    _component = name


def log(event: str, level: str = "info", **fields) -> None:
    if not _configured:
        configure(os.environ)
    levelno = LEVELS[level]
    if _logger.isEnabledFor(levelno):  # a disabled level builds no record (infer's hot path)
        # makeRecord rather than _logger.log: no line shows the caller's file and line, whose
        # lookup (a walk up the stack) would be a third of the cost.
        _logger.handle(_logger.makeRecord(_logger.name, levelno, "", 0, event, None, None,
                                          extra={"flts_fields": fields}))


def warn(event: str, **fields) -> None:
    log(event, level="warning", **fields)


def error(event: str, **fields) -> None:
    log(event, level="error", **fields)


def _lower(value):  # LOG_LEVEL=DEBUG as well as debug
    return value.lower() if isinstance(value, str) else value


class LogSettings(Settings):
    level: Annotated[Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)] = knob(
        "LOG_LEVEL", "info", "lowest level of flts' own log lines (any case); other libraries' from warning up, "
        "from debug up with debug")
    format: Annotated[Literal["json", "text"], BeforeValidator(_lower)] = knob(
        "LOG_FORMAT", "json", "json: one object a line (ts, level, component, event, fields); text: a short line")


def configure(env: Env, component: str | None = None) -> None:
    """Send every logger's lines through one stderr handler, by LOG_LEVEL and LOG_FORMAT.

    Raises ConfigError (naming the variable) for a bad value, before changing anything.
    Calling it again replaces the previous setup.
    """
    global _configured
    settings = LogSettings.from_env(env)
    level = LEVELS[settings.level]
    others = level if level == logging.DEBUG else max(level, logging.WARNING)  # other libraries' threshold
    _set_root_handler(FORMATTERS[settings.format](), others)
    _logger.setLevel(level)
    _route_third_party()
    logging.captureWarnings(True)  # a library's warnings.warn becomes a line of the same format
    if component:
        set_component(component)
    _configured = True


def _set_root_handler(formatter: logging.Formatter, others: int) -> None:
    """One stderr handler on the root logger (replacing ours from an earlier call), which
    lets other libraries' lines through from `others` up."""
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(_OthersFrom(others))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(others)


def _route_third_party() -> None:
    # MLflow gives its loggers their own INFO handler when imported unless this is set (read then).
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    for name in THIRD_PARTY:  # those imported already carry their own handler and level
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
        library.setLevel(logging.NOTSET)
    # plotly is optional here, and prophet reports its absence at ERROR on every import.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)


class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (pytest swaps it per test), like logging.lastResort."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler.__init__ would bind one stream

    @property
    def stream(self):
        return sys.stderr


class _OthersFrom(logging.Filter):
    """Other libraries' lines pass from `level` up: some (prophet) set their own logger to INFO on import."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or _is_ours(record)


def _is_ours(record: logging.LogRecord) -> bool:
    return hasattr(record, "flts_fields")  # set by log(); other loggers' lines have a message instead


def _dumps(value) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "component", "event", **fields}`; another library's line has its logger's
    name as the event and its text as `message`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "component": _component}
        if _is_ours(record):
            line["event"] = record.msg
            line.update(record.flts_fields)
        else:
            line.update(event=record.name, message=record.getMessage().rstrip())
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return _dumps(line).decode()


class TextFormatter(logging.Formatter):
    """`12:01:02 train-gru     train_success_publish model_type=GRU ...`; any level but INFO is named."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        if _is_ours(record):
            text = " ".join([record.msg, *(f"{key}={_text(value)}" for key, value in record.flts_fields.items())])
        else:
            text = f"{record.name}: {record.getMessage().rstrip()}"
        line = f"{self.formatTime(record, '%H:%M:%S')} {_component:<{COMPONENT_WIDTH}} {level}{text}"
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def _text(value) -> str:
    return value if isinstance(value, str) else _dumps(value).decode()


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}
