"""Reading configuration from the environment: one place for parsing and its errors.

Every knob is an environment variable (the serverless convention); handlers receive the
environment as a mapping so the embedded router can give each deployment its own
(e.g. MODEL_TYPE) without touching os.environ.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

Env = Mapping[str, str]


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


def env_str(env: Env, name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def env_int(env: Env, name: str, default: int, minimum: int | None = None) -> int:
    raw = env_str(env, name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(env: Env, name: str, default: float) -> float:
    raw = env_str(env, name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(env: Env, name: str, default: bool) -> bool:
    raw = env_str(env, name, "1" if default else "0").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_list(env: Env, name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(env, name, default).split(",") if item.strip()]


def process_env() -> dict[str, str]:
    return dict(os.environ)
