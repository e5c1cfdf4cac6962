"""Settings: every knob is an environment variable, declared once as a field of a settings model.

    class TrainSettings(Settings):
        epochs: int = knob("EPOCHS", 60, "passes over the training windows at most", ge=1)

A field says everything about its knob: the variable (exact, case-sensitive), the default,
the bounds and a one-line description, from which the docs tables (`flts settings-docs`)
and the deploy ConfigMap are derived. `TrainSettings.from_env(env)` reads a given mapping,
never os.environ: the embedded router gives each deployment its own environment (e.g.
MODEL_TYPE). An empty value means the default; a bad value raises ConfigError naming the
variable and the value (`EPOCHS must be an integer >= 1, got 'abc'`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple, Self, get_args, get_origin

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

Env = Mapping[str, str]


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


# ---------------------------------------------------------------- value types

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError("a boolean (1/0, true/false, yes/no, on/off)")


def _comma_list(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return tuple(item.strip() for item in value.split(",") if item.strip())


# Exactly these words, not pydantic's wider set (t/f/y/n), so a typo is refused.
Flag = Annotated[bool, BeforeValidator(_flag)]
# `a, b,,c` → ("a", "b", "c"); the environment has no JSON lists.
CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
FloatList = Annotated[tuple[float, ...], BeforeValidator(_comma_list)]  # `0.8, 0.95` → (0.8, 0.95)


def knob(env_name: str, default: Any, description: str, **constraints: Any) -> Any:
    """A settings field: its variable, default (`...`: required), one-line description and
    bounds (`ge=`, `gt=`, `le=`, `lt=`) or other pydantic Field options (`repr=False`)."""
    return Field(default, validation_alias=env_name, description=description, **constraints)


# ---------------------------------------------------------------- the base model

class _GivenEnv(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Env):
        self._given = env  # read by _load_env_vars, which the parent's __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class Settings(BaseSettings):
    """Base of every settings model: build one with `from_env(env)` (or with field names in code)."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,  # VAR= means the default, as an unset VAR
        enable_decoding=False,  # lists are comma-separated (CommaList), not JSON
        frozen=True,
        extra="forbid",
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        undeclared = [name for name, f in cls.model_fields.items() if not (f.validation_alias and f.description)]
        if undeclared:
            raise TypeError(f"{cls.__name__}: declare {undeclared} with knob(VARIABLE, default, description)")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_unused):
        # Only what from_env or the code passes: never os.environ, a .env file or a secrets dir.
        return (init_settings,)

    def __init__(self, **values: Any) -> None:
        # Code passes field names, from_env variable names. Not populate_by_name: with it the
        # environment source would also read a variable named like a field (`seed`).
        fields = type(self).model_fields
        values = {fields[key].validation_alias if key in fields else key: value for key, value in values.items()}
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(type(self), exc) from None

    @classmethod
    def from_env(cls, env: Env) -> Self:
        return cls(**_GivenEnv(cls, env)())


# ---------------------------------------------------------------- errors that name the variable

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}


def _expectation(field: FieldInfo) -> str:
    """What a field accepts, in words: `an integer >= 1`, `one of ['mse', 'huber']`."""
    if get_origin(field.annotation) is Literal:
        return f"one of {list(get_args(field.annotation))}"
    bounds = [f"{word} {getattr(m, attr)}" for m in field.metadata for attr, word in _BOUNDS if hasattr(m, attr)]
    return " ".join([_KINDS.get(field.annotation, "a valid value"), " and ".join(bounds)]).strip()


def _describe(model: type[Settings], error: dict) -> str:
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError) or not error["loc"]:  # a whole message; cross-field ones name their variables
        return str(cause)
    field = {f.validation_alias: f for f in model.model_fields.values()}.get(error["loc"][0])  # __init__ passes aliases
    if field is None:
        return f"{error['loc'][0]} is not a setting of {model.__name__}"
    if error["type"] == "missing":
        return f"{field.validation_alias} is not set ({field.description})"
    # A validator's ValueError says what is expected; pydantic's own errors get it from the field.
    expected = str(cause) if error["type"] == "value_error" else _expectation(field)
    return f"{field.validation_alias} must be {expected}, got {error['input']!r}"


def _config_error(model: type[Settings], exc: ValidationError) -> ConfigError:
    return ConfigError("; ".join(dict.fromkeys(_describe(model, e) for e in exc.errors())))


# ---------------------------------------------------------------- what the docs and deploy files read

class Variable(NamedTuple):
    name: str
    default: str | None  # spelt as in the environment ("1", "a,b"); None: required, no default
    description: str


def env_value(value: Any) -> str:
    """A Python value spelt as an environment variable: True → "1", ("a", "b") → "a,b"."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple | list):
        return ",".join(env_value(item) for item in value)
    return str(value)


def variables(model: type[Settings]) -> list[Variable]:
    """Every variable a settings model reads, in declaration order."""
    return [Variable(f.validation_alias, None if f.is_required() else env_value(f.default), f.description)
            for f in model.model_fields.values()]


# ---------------------------------------------------------------- knobs several functions read

class DataColumns(Settings):
    """The columns preprocess writes and train reads: both deployments must agree."""

    timestamp_column: str = knob("TIMESTAMP_COLUMN", "time", "the timestamp column")
    target: str = knob("TARGET_COLUMN", "down", "the forecast target (numeric, not all empty)")


class ProcessedBucket(Settings):
    processed_bucket: str = knob("PROCESSED_BUCKET", "processed-data",
                                 "bucket of the feature Parquet files preprocess writes")


class PromotionBucket(Settings):
    promotion_bucket: str = knob("PROMOTION_BUCKET", "model-promotion",
                                 "bucket of the promoted models and their pointers")


class Tracking(Settings):
    """MLflow, as train and eval reach it: both must name the same experiment."""

    tracking_uri: str = knob("MLFLOW_TRACKING_URI", "", "MLflow tracking URI; empty = MLflow's own default (./mlruns)")
    experiment_name: str = knob("MLFLOW_EXPERIMENT_NAME", "", "MLflow experiment; empty = flts-<identifier>")
