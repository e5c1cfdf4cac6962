"""Request body → model input window, with numpy only (no pandas on the request path).

Users send raw columns; the cyclic time features the models were trained on
(`minute_sin, minute_cos, dow_sin, dow_cos`, see flts.preprocess.add_time_features) are
computed here from the request's own timestamps. Every refusal is a RequestError whose
message names the field, the row and the problem.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

import numpy as np

from flts.intervals import IntervalScaling

TIME_FEATURES = ("minute_sin", "minute_cos", "dow_sin", "dow_cos")
_EPOCH = datetime(1970, 1, 1)
_NUMBER_TYPES = {int, float}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(ValueError):
    """The request is wrong; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """What a model needs from a request (taken from the promotion pointer)."""

    input_seq_len: int
    output_seq_len: int
    feature_columns: tuple[str, ...]
    target: str
    timestamp_column: str = "time"
    frequency_seconds: float | None = None
    # (level, half-width per horizon step): split-conformal, from the pointer (eval computed them)
    intervals: tuple[tuple[float, tuple[float, ...]], ...] = ()
    # how the half-widths scale with the target history a request sends (fixed widths by default)
    scaling: IntervalScaling = IntervalScaling()

    @property
    def scaled_intervals(self) -> bool:
        return bool(self.intervals and self.scaling.scaled)

    @property
    def history_rows(self) -> int:
        """Rows a /predict request sends: the model's window, and the rows its interval scale reads."""
        return max(self.input_seq_len, self.scaling.history_rows(self.output_seq_len) if self.scaled_intervals else 0)

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The columns a user must send: features that are not computed from the timestamp."""
        return tuple(c for c in self.feature_columns if c not in TIME_FEATURES)


@dataclass(frozen=True)
class Window:
    x: np.ndarray            # [input_seq_len, n_features] float32, feature_columns order
    last_wall: float         # wall-clock seconds since 1970 of the last input row
    step_seconds: float      # spacing of the forecast timestamps
    steps: int               # how many forecast steps to return
    tz: tzinfo | None        # offset of the input timestamps, kept on the output
    sep: str                 # "T" or " ", as the input wrote its timestamps
    scale: np.ndarray | float = 1.0  # [output_seq_len]: the intervals' scale per step (InputSpec.scaling), or 1


# ---------------------------------------------------------------- time

def wall_seconds(times: np.ndarray) -> np.ndarray:
    """datetime64 values → float seconds since 1970 (wall clock, no timezone)."""
    return times.astype("datetime64[us]").astype(np.int64) / 1e6


def time_features(wall: np.ndarray) -> dict[str, np.ndarray]:
    """The same encodings as preprocess: minute of day and day of week (Monday = 0) on circles."""
    seconds = np.floor(np.asarray(wall, dtype=np.float64))
    minute = (seconds % 86400) // 60
    day = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday (3 when Monday is 0)
    return {
        "minute_sin": np.sin(2 * np.pi * minute / 1440.0),
        "minute_cos": np.cos(2 * np.pi * minute / 1440.0),
        "dow_sin": np.sin(2 * np.pi * day / 7.0),
        "dow_cos": np.cos(2 * np.pi * day / 7.0),
    }


def parse_timestamps(values, column: str) -> tuple[np.ndarray, np.ndarray, tzinfo | None, str]:
    """ISO 8601 strings → (wall seconds, instants for ordering, tz, separator)."""
    if not isinstance(values, list):
        raise RequestError(f"'{column}' must be a list of ISO 8601 timestamps, got {type(values).__name__}")
    parsed = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise RequestError(f"'{column}'[{i}] must be an ISO 8601 timestamp string, got {_kind(value)}")
        try:
            parsed.append(datetime.fromisoformat(value))
        except ValueError:
            raise RequestError(f"'{column}'[{i}] = {value[:40]!r} is not an ISO 8601 timestamp") from None
    aware = {p.tzinfo is not None for p in parsed}
    if len(aware) > 1:
        raise RequestError(f"'{column}' mixes timestamps with and without a UTC offset")
    wall = np.fromiter(((p.replace(tzinfo=None) - _EPOCH) / timedelta(seconds=1) for p in parsed),
                       dtype=np.float64, count=len(parsed))
    instants = wall if True not in aware else np.fromiter((p.timestamp() for p in parsed), np.float64, len(parsed))
    tz = parsed[-1].tzinfo if parsed else None
    sep = "T" if values and len(values[-1]) > 10 and values[-1][10] == "T" else " "
    return wall, instants, tz, sep


def check_order(instants: np.ndarray, column: str) -> None:
    steps = np.diff(instants)
    if steps.size and steps.min() <= 0:
        row = int(np.argmax(steps <= 0)) + 1
        problem = "duplicate" if steps[row - 1] == 0 else "unsorted (earlier than the row before)"
        raise RequestError(f"'{column}': timestamp at row {row} is {problem}; timestamps must be strictly increasing")


def format_forecast_times(window: Window) -> list[str]:
    out = []
    try:
        base = _EPOCH + timedelta(seconds=window.last_wall)
        for k in range(1, window.steps + 1):
            ts = base + timedelta(seconds=window.step_seconds * k)
            if window.tz is not None:
                ts = ts.replace(tzinfo=window.tz)
            out.append(ts.isoformat(sep=window.sep))
    except OverflowError:
        raise RequestError("the forecast timestamps would pass the year 9999") from None
    return out


def interval_scales(x: np.ndarray, spec: InputSpec) -> np.ndarray | float:
    """[batch, output_seq_len]: the interval scales of each window of a batch [batch, L, F] from the
    target rows it holds: the v2 route, whose tensor is exactly the model's window."""
    if not spec.scaled_intervals:
        return 1.0
    return spec.scaling.scales(x[:, :, spec.feature_columns.index(spec.target)], spec.output_seq_len)


def interval_name(level: float) -> str:
    """0.8 → "80", 0.975 → "97.5": the suffix of lower_/upper_ keys and v2 output names."""
    return f"{level * 100:g}"


def with_intervals(forecast: np.ndarray, spec: InputSpec, scale: float | np.ndarray = 1.0) -> dict[str, np.ndarray]:
    """{"lower_80": ..., "upper_80": ...} around forecast [..., steps], one pair per level; `scale`:
    the window's scale per step ([batch, steps] for a batch), which scaled intervals multiply."""
    if not spec.intervals:
        return {}
    steps = forecast.shape[-1]
    factor = np.asarray(scale, dtype=forecast.dtype) if spec.scaled_intervals else np.ones((), forecast.dtype)
    factor = factor[..., :steps] if factor.ndim else factor
    bounds = {}
    for level, half_widths in spec.intervals:
        half = np.asarray(half_widths[:steps], dtype=forecast.dtype) * factor
        bounds[f"lower_{interval_name(level)}"] = forecast - half
        bounds[f"upper_{interval_name(level)}"] = forecast + half
    return bounds


# ---------------------------------------------------------------- numbers

def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def numeric_column(values, name: str, rows: int) -> np.ndarray:
    if not isinstance(values, list):
        raise RequestError(f"column '{name}' must be a list of numbers, got {_kind(values)}")
    if len(values) != rows:
        raise RequestError(f"column '{name}' has {len(values)} values but the timestamp column has {rows}")
    if not set(map(type, values)) <= _NUMBER_TYPES:  # bools, strings and nulls are refused
        i, bad = next((i, v) for i, v in enumerate(values) if type(v) not in _NUMBER_TYPES)
        raise RequestError(f"column '{name}' row {i}: expected a number, got {_kind(bad)}"
                           + (" (NaN/missing values are not accepted)" if bad is None else ""))
    array = np.array(values, dtype=np.float64)
    too_big = np.abs(array) > _FLOAT32_MAX
    if too_big.any():
        raise RequestError(f"column '{name}' row {int(np.argmax(too_big))}: value is out of the float32 range")
    return array


# ---------------------------------------------------------------- the body

def columns_from_rows(rows, names: tuple[str, ...]) -> dict[str, list]:
    """`"rows": [{...}, ...]` → `{"name": [...]}` for the names the model needs."""
    if not isinstance(rows, list):
        raise RequestError(f"'rows' must be a list of objects, got {_kind(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(f"'rows'[{i}] must be an object, got {_kind(row)}")
    columns = {}
    for name in names:
        missing = next((i for i, row in enumerate(rows) if name not in row), None)
        if missing is not None:
            if missing == 0 and all(name not in row for row in rows):
                continue  # reported as a missing column below
            raise RequestError(f"'rows'[{missing}] has no value for '{name}'")
        columns[name] = [row[name] for row in rows]
    return columns


def _int_field(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise RequestError(f"'{name}' must be an integer from {low} to {high}, got {value!r}"[:200])
    return value


def parse_predict(body, spec: InputSpec, max_rows: int) -> Window:
    """Validate a /predict body against a model's needs and cut its input window."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {_kind(body)}")
    index_col = body.get("index_col") or spec.timestamp_column
    if not isinstance(index_col, str):
        raise RequestError(f"'index_col' must be a string, got {_kind(index_col)}")
    steps = _int_field(body, "inference_length", spec.output_seq_len, 1, spec.output_seq_len)
    needed = (index_col, *spec.raw_columns)
    if "data" in body:
        data = body["data"]
        if not isinstance(data, dict):
            raise RequestError(f"'data' must be an object of columns, got {_kind(data)}")
    elif "rows" in body:
        data = columns_from_rows(body["rows"], needed)
    else:
        raise RequestError("the body needs 'data' (an object of columns) or 'rows' (a list of objects)")
    missing = [name for name in needed if name not in data]
    if missing:
        raise RequestError(f"missing columns {missing}; the model needs {list(needed)}")

    wall, instants, tz, sep = parse_timestamps(data[index_col], index_col)
    rows = len(wall)
    if rows < spec.history_rows:
        raise RequestError(f"{rows} rows are too few: the model needs at least {spec.history_rows} rows of history "
                           f"(GET /readyz: model.history_rows)")
    if rows > max_rows:
        raise RequestError(f"{rows} rows are more than the limit of {max_rows} (MAX_ROWS)", status=413)
    check_order(instants, index_col)

    raw = {name: numeric_column(data[name], name, rows) for name in spec.raw_columns}
    last = slice(rows - spec.input_seq_len, rows)
    computed = time_features(wall[last])
    x = np.empty((spec.input_seq_len, len(spec.feature_columns)), dtype=np.float32)
    for j, name in enumerate(spec.feature_columns):
        x[:, j] = computed[name] if name in computed else raw[name][last]
    step = spec.frequency_seconds or (float(np.median(np.diff(wall))) if rows > 1 else 0.0)
    if step <= 0:
        raise RequestError("cannot tell the data frequency from one row; send at least two rows")
    scale = spec.scaling.scales(raw[spec.target], spec.output_seq_len) if spec.scaled_intervals else 1.0
    return Window(x=x, last_wall=float(wall[-1]), step_seconds=float(step), steps=steps, tz=tz, sep=sep, scale=scale)
