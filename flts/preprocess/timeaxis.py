"""The time axis of a raw file: timestamps parsed, in UTC when TIMEZONE says, on a regular grid.

Rows are numbered as the user counts them: the first row under the header is row 1. A refusal
names the file, the column, the row, the value and the setting that fixes it.
"""
from __future__ import annotations

import pandas as pd
from pandas.tseries.api import guess_datetime_format

from flts.preprocess.errors import DataError
from flts.preprocess.settings import PreprocessSettings

UNIX_SECONDS_MAX = 1e11  # year 5138: a larger number is milliseconds or nanoseconds, not seconds
DAY_SECONDS, WEEK_SECONDS = 86_400, 7 * 86_400
FORMAT_HINT = ("set TIMESTAMP_FORMAT to their strftime format (e.g. %d/%m/%Y %H:%M), or TIMESTAMP_DAYFIRST=1 for "
               "day-first dates")
TIMEZONE_HINT = "set TIMEZONE to the data's IANA time zone (e.g. Europe/Madrid)"
PARSE_ERRORS = (ValueError, TypeError, OverflowError)


def _first(mask: pd.Series) -> int:
    """Position of the first True."""
    return int(mask.to_numpy().argmax())


# ---------------------------------------------------------------- parsing

def parse_times(raw: pd.Series, settings: PreprocessSettings, name: str) -> pd.Series:
    """Timestamps as datetimes, naive UTC when TIMEZONE is set; a numeric column holds Unix seconds."""
    unix = pd.api.types.is_numeric_dtype(raw) and not settings.timestamp_format
    times = _unix_seconds(raw, name) if unix else _parsed_text(raw, settings, name)
    _refuse_unparsed(times, raw, settings.timestamp_format, name)
    if settings.timezone and not unix:  # Unix seconds are UTC by definition
        times = _in_utc(times, raw, settings.timezone, name)
    return times


def _unix_seconds(raw: pd.Series, name: str) -> pd.Series:
    if raw.abs().max() > UNIX_SECONDS_MAX:
        raise DataError(f"{name}: numeric timestamps must be Unix seconds; {raw.abs().max():.0f} looks like "
                        f"milliseconds or finer (column {raw.name!r}); or set TIMESTAMP_FORMAT if they are dates "
                        "like 20200101")
    return pd.to_datetime(raw, unit="s", errors="coerce")


def _parsed_text(raw: pd.Series, settings: PreprocessSettings, name: str) -> pd.Series:
    text = raw.astype("string") if pd.api.types.is_numeric_dtype(raw) else raw  # e.g. 20200101 under a format
    return _to_datetime(text, _read_options(text, settings, name), settings, name)


def _read_options(text: pd.Series, settings: PreprocessSettings, name: str) -> dict:
    """How pandas reads the column; {} lets it infer the format from the first value, as it always has."""
    if settings.timestamp_format:
        return {"format": settings.timestamp_format}
    values = text.dropna()
    if values.empty:
        return {}
    month_first = guess_datetime_format(str(values.iloc[0]))
    if month_first and month_first.startswith("%Y"):
        return {}  # year first (ISO 8601): no question of order, and pandas' dayfirst would misread it
    day_first = guess_datetime_format(str(values.iloc[0]), dayfirst=True)
    if settings.timestamp_dayfirst:
        return {"format": day_first} if day_first else {"dayfirst": True}
    if month_first and day_first and month_first != day_first:
        return {"format": _one_reading(text, month_first, day_first, name)}
    return {"format": month_first} if month_first else {}  # the format pandas infers, without its warning


def _one_reading(text: pd.Series, month_first: str, day_first: str, name: str) -> str:
    """The first value reads both ways (05/06/2000): the format under which more rows parse; refused when
    every row reads both ways, since nothing then says which is meant."""
    as_month, as_day = (pd.to_datetime(text, format=f, errors="coerce", utc=True) for f in (month_first, day_first))
    given = text.notna()
    if as_month[given].notna().all() and as_day[given].notna().all():
        differ = as_month != as_day
        if differ.any():
            row = _first(differ)
            raise DataError(f"{name}: the dates in column {text.name!r} read both ways: row {row + 1} "
                            f"{text.iloc[row]!r} is {as_month.iloc[row]:%Y-%m-%d} month-first or "
                            f"{as_day.iloc[row]:%Y-%m-%d} day-first; set TIMESTAMP_DAYFIRST=1 for day-first dates, "
                            f"or TIMESTAMP_FORMAT={month_first} for month-first ones")
        return month_first
    return day_first if as_day.notna().sum() > as_month.notna().sum() else month_first


def _to_datetime(text: pd.Series, options: dict, settings: PreprocessSettings, name: str) -> pd.Series:
    try:
        return pd.to_datetime(text, errors="coerce", **options)
    except PARSE_ERRORS as exc:  # errors="coerce" still raises for UTC offsets that differ between rows
        problem = str(exc).splitlines()[0]
    try:
        in_utc = pd.to_datetime(text, errors="coerce", utc=True, **options)
    except PARSE_ERRORS:  # not a matter of offsets: e.g. a bad directive in TIMESTAMP_FORMAT
        raise DataError(f"{name}: timestamps cannot be parsed ({problem}; column {text.name!r}); "
                        "check TIMESTAMP_FORMAT") from None
    if not settings.timezone:
        raise DataError(_mixed_offsets(text, name))
    return in_utc


def _mixed_offsets(text: pd.Series, name: str) -> str:
    where = f"in column {text.name!r}"
    row = _offset_change(text)
    if row is not None:
        where += f": row 1 {text.iloc[0]!r} and row {row + 1} {text.iloc[row]!r} have different UTC offsets"
    return (f"{name}: timestamps cannot be parsed (Mixed timezones {where}, as across a clock change); "
            f"{TIMEZONE_HINT}: every timestamp is then converted to UTC")


def _offset_change(text: pd.Series) -> int | None:
    """Position of the first value whose UTC offset differs from the first value's (an error path only)."""
    offsets = (_utc_offset(value) for value in text)
    first = next(offsets)
    return next((row for row, offset in enumerate(offsets, 1) if offset is not None and offset != first), None)


def _utc_offset(value) -> object:
    try:
        return pd.Timestamp(value).utcoffset() if pd.notna(value) else None
    except (ValueError, TypeError):
        return None


def _refuse_unparsed(times: pd.Series, raw: pd.Series, timestamp_format: str, name: str) -> None:
    if not times.isna().any():
        return
    row = _first(times.isna())
    value = raw.iloc[row]
    if pd.isna(value):
        what, fix = "empty timestamp", "fill in or delete that row"
    elif timestamp_format:
        what, fix = f"timestamp {value!r}", f"it does not match TIMESTAMP_FORMAT={timestamp_format}"
    else:
        what, fix = f"timestamp {value!r}", FORMAT_HINT
    raise DataError(f"{name}: {what} in row {row + 1} cannot be parsed (column {raw.name!r}); {fix}")


# ---------------------------------------------------------------- time zones

def _in_utc(times: pd.Series, raw: pd.Series, zone: str, name: str) -> pd.Series:
    """Naive UTC: times with offsets are converted; local times are localised in `zone` first."""
    if times.dt.tz is None:
        times = _localised(times, raw, zone, name)
    return times.dt.tz_convert("UTC").dt.tz_localize(None)


def _localised(times: pd.Series, raw: pd.Series, zone: str, name: str) -> pd.Series:
    # When clocks go back an hour repeats; in time order its first pass is summer time, the second winter time.
    first_pass = ~times.duplicated().to_numpy()
    local = times.dt.tz_localize(zone, ambiguous=first_pass, nonexistent="NaT")
    if local.isna().any():
        row = _first(local.isna())
        raise DataError(f"{name}: timestamp {raw.iloc[row]!r} in row {row + 1} (column {raw.name!r}) does not exist "
                        f"in TIMEZONE={zone}: clocks skip that hour in spring; check that TIMEZONE is the file's "
                        "time zone")
    return local


# ---------------------------------------------------------------- order and grid

def check_time_order(times: pd.Series, raw: pd.Series, settings: PreprocessSettings, name: str) -> None:
    duplicated = times.duplicated()
    if duplicated.any():
        row = _first(duplicated)
        raise DataError(f"{name}: duplicate timestamp {times.iloc[row]}{' UTC' if settings.timezone else ''} "
                        f"in row {row + 1}{_duplicate_detail(times, raw, row, settings)}")
    backwards = times.diff() < pd.Timedelta(0)
    if backwards.any():
        row = _first(backwards)
        raise DataError(f"{name}: timestamps are not sorted: row {row + 1} ({times.iloc[row]}) comes before row {row} "
                        f"({times.iloc[row - 1]}) in column {raw.name!r}; sort the file by time")


def _duplicate_detail(times: pd.Series, raw: pd.Series, row: int, settings: PreprocessSettings) -> str:
    """The file's value and its twin's row; without TIMEZONE, the hint that local time repeats an
    hour when clocks go back."""
    detail = f" (column {raw.name!r}: {raw.iloc[row]!r}, as row {_first(times == times.iloc[row]) + 1})"
    return detail if settings.timezone else f"{detail}; if it is local time, {TIMEZONE_HINT}"


def regular_step(times: pd.Series, name: str) -> pd.Timedelta:
    """The data's time step: the median spacing, which gaps and clock changes leave alone."""
    if len(times) < 2:
        raise DataError(f"{name}: one row is too few to tell the time step; give at least two")
    return times.diff().quantile(0.5, interpolation="lower")  # a spacing that occurs, never a mean of two


def put_on_grid(frame: pd.DataFrame, ts: str, step: pd.Timedelta, anchor: pd.Timestamp, name: str) -> pd.DataFrame:
    """Every step from the first row to the last; a missing step becomes a row of empty cells for `impute`."""
    times = frame[ts]
    off_grid = (times - anchor) % step != pd.Timedelta(0)
    if off_grid.any():
        row = _first(off_grid)
        raise DataError(f"{name}: timestamp {times.iloc[row]} in row {row + 1} (column {ts!r}) is off the grid of one "
                        f"row every {step.total_seconds():g} s from {anchor} (the median spacing); resample the file "
                        "to evenly spaced rows")
    grid = pd.date_range(times.iloc[0], times.iloc[-1], freq=step, unit=times.dt.unit, name=ts)
    if len(grid) == len(frame):
        return frame  # already regular: left exactly as read
    return frame.set_index(ts).reindex(grid).reset_index()[frame.columns]


def gap_report(parts: list[pd.Series], step: pd.Timedelta) -> dict:
    """What the grid added to these timestamp columns: rows in all, gaps, and the widest gap."""
    gaps = pd.concat([_gaps(times, step) for times in parts], ignore_index=True)
    widest = gaps.loc[gaps["rows"].idxmax()] if len(gaps) else None
    return {
        "rows_added": int(gaps["rows"].sum()),
        "gaps": len(gaps),
        "largest_gap_rows": 0 if widest is None else int(widest["rows"]),
        "largest_gap_start": None if widest is None else str(widest["start"]),
    }


def _gaps(times: pd.Series, step: pd.Timedelta) -> pd.DataFrame:
    """One row per gap: its first missing time and how many steps are missing."""
    missing = times.diff() // step - 1
    at = missing > 0
    return pd.DataFrame({"start": (times.shift() + step)[at], "rows": missing[at].astype(int)})


def seasonal_periods(rows: int, step: pd.Timedelta) -> list[int]:
    """The daily and weekly periods in steps that the history supports: two full cycles at least."""
    periods = []
    for seconds in (DAY_SECONDS, WEEK_SECONDS):
        steps = seconds / step.total_seconds()
        if steps.is_integer() and steps > 1 and rows >= 2 * steps:
            periods.append(int(steps))
    return periods
