"""Ingestion of real files: date order, formats, time zones and clock changes, the regular grid.

The LTE data at the default settings must come out as before these knobs existed: the same
config hash and the same column bytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flts import events, routing
from flts.dev.demo import upload_dataset
from flts.embedded import EmbeddedRouter
from flts.events import DatasetReady
from flts.preprocess.handler import DataError, PreprocessSettings, preprocess, read_csv
from flts.preprocess.timeaxis import seasonal_periods
from flts.settings import ConfigError
from flts.storage import FileStore, get_json

BIKE = Path(__file__).resolve().parent.parent / "data" / "bike"
BIKE_ENV = {"TIMESTAMP_COLUMN": "time", "TARGET_COLUMN": "cnt", "TIMEZONE": "America/New_York"}
AXIS_FIELDS = ("frequency_seconds", "seasonal_periods", "test_follows_train", "grid")


def csv(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def times(raw: bytes, **env: str) -> list[str]:
    return [str(t) for t in read_csv(raw, PreprocessSettings.from_env(env), "x.csv")["time"]]


def refused(raw: bytes, **env: str) -> str:
    with pytest.raises(DataError) as caught:
        read_csv(raw, PreprocessSettings.from_env(env), "x.csv")
    return str(caught.value)


# ---------------------------------------------------------------- date order and formats

AMBIGUOUS = csv("time,down", "05/06/2000 00:30,1", "06/06/2000 00:30,2")


def test_dates_that_read_both_ways_are_refused_naming_both_knobs_and_a_row():
    message = refused(AMBIGUOUS)
    assert message.startswith("x.csv: the dates in column 'time' read both ways: row 1 '05/06/2000 00:30'")
    assert "2000-05-06 month-first or 2000-06-05 day-first" in message
    assert "TIMESTAMP_DAYFIRST=1" in message and "TIMESTAMP_FORMAT=%m/%d/%Y %H:%M" in message


def test_timestamp_dayfirst_reads_day_first():
    assert times(AMBIGUOUS, TIMESTAMP_DAYFIRST="1") == ["2000-06-05 00:30:00", "2000-06-06 00:30:00"]


def test_day_first_dates_are_read_day_first_when_only_that_reading_fits():
    # pandas alone reads row 1 month-first from its first value and then fails on 13/06
    raw = csv("time,down", "05/06/2000 00:30,1", "06/06/2000 00:30,2", "13/06/2000 00:30,3")
    assert times(raw) == ["2000-06-05 00:30:00", "2000-06-06 00:30:00", "2000-06-13 00:30:00"]


def test_timestamp_dayfirst_leaves_year_first_dates_alone():
    raw = csv("time,down", "2000-05-06 00:30,1", "2000-05-07 00:30,2")
    assert times(raw, TIMESTAMP_DAYFIRST="1") == ["2000-05-06 00:30:00", "2000-05-07 00:30:00"]


def test_timestamp_format_is_used_as_given():
    assert times(AMBIGUOUS, TIMESTAMP_FORMAT="%m/%d/%Y %H:%M") == ["2000-05-06 00:30:00", "2000-06-06 00:30:00"]
    odd = csv("time,down", "2000.06.13 00h30,1", "2000.06.13 01h00,2")
    assert times(odd, TIMESTAMP_FORMAT="%Y.%m.%d %Hh%M") == ["2000-06-13 00:30:00", "2000-06-13 01:00:00"]


def test_timestamp_format_reads_numbers_as_dates_not_unix_seconds():
    raw = csv("time,down", "200006130030,1", "200006130100,2")
    assert times(raw, TIMESTAMP_FORMAT="%Y%m%d%H%M") == ["2000-06-13 00:30:00", "2000-06-13 01:00:00"]


def test_a_row_off_the_timestamp_format_is_named():
    raw = csv("time,down", "05/06/2000 00:30,1", "13/06/2000 00:30,2")
    assert refused(raw, TIMESTAMP_FORMAT="%m/%d/%Y %H:%M") == (
        "x.csv: timestamp '13/06/2000 00:30' in row 2 cannot be parsed (column 'time'); "
        "it does not match TIMESTAMP_FORMAT=%m/%d/%Y %H:%M")


def test_an_unreadable_timestamp_names_the_knobs():
    message = refused(csv("time,down", "05/06/2000 00:30,1", "soon,2"))
    assert message.startswith("x.csv: timestamp 'soon' in row 2 cannot be parsed (column 'time'); set TIMESTAMP_FORMAT")
    assert "TIMESTAMP_DAYFIRST=1" in message


# ---------------------------------------------------------------- time zones

def test_offsets_across_a_clock_change_become_naive_utc():
    raw = csv("time,down", "2020-03-29 00:00+01:00,1", "2020-03-29 01:00+01:00,2", "2020-03-29 03:00+02:00,3")
    assert times(raw, TIMEZONE="Europe/Madrid") == ["2020-03-28 23:00:00", "2020-03-29 00:00:00", "2020-03-29 01:00:00"]


def test_mixed_offsets_without_timezone_are_refused_naming_timezone():
    raw = csv("time,down", "2020-03-29 00:00+01:00,1", "2020-03-29 01:00+01:00,2", "2020-03-29 03:00+02:00,3")
    message = refused(raw)
    assert "row 1 '2020-03-29 00:00+01:00' and row 3 '2020-03-29 03:00+02:00' have different UTC offsets" in message
    assert "set TIMEZONE" in message and "converted to UTC" in message


def test_one_offset_without_timezone_is_kept_as_before():
    raw = csv("time,down", "2020-01-01 00:00+01:00,1", "2020-01-01 01:00+01:00,2")
    parsed = read_csv(raw, PreprocessSettings(), "x.csv")
    assert str(parsed["time"].dt.tz) == "UTC+01:00"


AUTUMN = csv("time,down", "2020-10-25 01:30,1", "2020-10-25 02:00,2", "2020-10-25 02:30,3",
             "2020-10-25 02:00,4", "2020-10-25 02:30,5", "2020-10-25 03:00,6")


def test_local_time_repeating_the_autumn_hour_is_disambiguated_by_order():
    # 02:00 and 02:30 come twice: first in summer time (UTC+2), then in winter time (UTC+1)
    assert times(AUTUMN, TIMEZONE="Europe/Madrid") == [
        "2020-10-24 23:30:00", "2020-10-25 00:00:00", "2020-10-25 00:30:00",
        "2020-10-25 01:00:00", "2020-10-25 01:30:00", "2020-10-25 02:00:00"]


def test_local_time_without_timezone_names_it_at_the_repeated_hour():
    message = refused(AUTUMN)
    assert message.startswith("x.csv: duplicate timestamp 2020-10-25 02:00:00 in row 4 (column 'time': "
                              "'2020-10-25 02:00', as row 2)")
    assert "set TIMEZONE" in message


def test_local_time_across_the_spring_change_has_no_gap_in_utc():
    raw = csv("time,down", "2020-03-29 01:00,1", "2020-03-29 03:00,2", "2020-03-29 04:00,3")
    assert times(raw, TIMEZONE="Europe/Madrid") == ["2020-03-29 00:00:00", "2020-03-29 01:00:00", "2020-03-29 02:00:00"]


def test_a_local_time_the_spring_change_skips_is_refused():
    message = refused(csv("time,down", "2020-03-29 01:00,1", "2020-03-29 02:00,2"), TIMEZONE="Europe/Madrid")
    assert message.startswith("x.csv: timestamp '2020-03-29 02:00' in row 2 (column 'time') does not exist in "
                              "TIMEZONE=Europe/Madrid")


def test_a_duplicate_left_after_the_time_zone_is_named_in_utc():
    raw = csv("time,down", "2020-10-25 02:00,1", "2020-10-25 02:00,2", "2020-10-25 02:00,3")
    assert refused(raw, TIMEZONE="Europe/Madrid").startswith(
        "x.csv: duplicate timestamp 2020-10-25 01:00:00 UTC in row 3 (column 'time': '2020-10-25 02:00', as row 2)")


def test_unix_seconds_are_utc_whatever_the_timezone():
    assert times(csv("time,down", "1577836800,1", "1577836920,2"), TIMEZONE="America/New_York") == [
        "2020-01-01 00:00:00", "2020-01-01 00:02:00"]


@pytest.mark.parametrize("env, message", [
    ({"TIMEZONE": "Mars/Olympus"}, "TIMEZONE must be an IANA time zone name such as Europe/Madrid"),
    ({"TIMESTAMP_FORMAT": "dd/mm/yyyy"}, "TIMESTAMP_FORMAT must be a strftime format"),
    ({"TIMESTAMP_FORMAT": "%d/%m/%Y", "TIMESTAMP_DAYFIRST": "1"},
     "set TIMESTAMP_FORMAT or TIMESTAMP_DAYFIRST, not both"),
    ({"TIMESTAMP_DAYFIRST": "maybe"}, "TIMESTAMP_DAYFIRST must be a boolean"),
])
def test_bad_parsing_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessSettings.from_env(env)


# ---------------------------------------------------------------- the regular grid

def run(store: FileStore, train: bytes, test: bytes | None = None, **env: str) -> dict:
    store.put_bytes("raw-data", "s/train.csv", train)
    if test is not None:
        store.put_bytes("raw-data", "s/test.csv", test)
    request = DatasetReady(bucket="raw-data", object_key="s/train.csv", identifier="s",
                           test_object_key="s/test.csv" if test is not None else None)
    return preprocess(store, request, PreprocessSettings.from_env(env))


def parquet(store: FileStore, meta: dict, part: str) -> pq.ParquetFile:
    return pq.ParquetFile(store.root / meta["bucket"] / meta["objects"][part])


# hourly, 03:00 to 04:00 and 08:00 missing; `down` is the hour + 1
GAPPY = csv("time,down", *(f"2020-01-01 {hour:02d}:00,{hour + 1}" for hour in (0, 1, 2, 5, 6, 7, 9)))


def test_gaps_are_put_on_the_grid_imputed_and_reported(file_store, capfd):
    meta = run(file_store, GAPPY, csv("time,down", "2020-01-01 10:00,11", "2020-01-01 12:00,13"), TIME_FEATURES="0")
    train = parquet(file_store, meta, "train").read().to_pandas()
    assert train["time"].diff().dropna().eq(pd.Timedelta("1h")).all()
    assert train["down"].tolist() == [float(hour + 1) for hour in range(10)]  # imputed as `impute` does
    assert (meta["row_count"], meta["test_row_count"]) == (10, 3)
    assert meta["grid"] == {"rows_added": 4, "gaps": 3, "largest_gap_rows": 2,
                            "largest_gap_start": "2020-01-01 03:00:00"}
    assert meta["frequency_seconds"] == 3600.0 and meta["test_follows_train"] is True
    for part in ("train", "test"):
        stored = parquet(file_store, meta, part).schema_arrow.metadata
        assert {field: json.loads(stored[field.encode()]) for field in AXIS_FIELDS} == {f: meta[f] for f in AXIS_FIELDS}
    [line] = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"preprocess_grid"' in x]
    assert (line["rows_added"], line["gaps"], line["largest_gap_rows"]) == (4, 3, 2)


def test_a_test_file_after_a_gap_is_accepted_but_does_not_follow(file_store):
    meta = run(file_store, GAPPY, csv("time,down", "2020-01-01 11:00,12", "2020-01-01 12:00,13"))
    assert meta["test_follows_train"] is False


def test_a_split_without_test_file_follows_and_grids_first(file_store):
    meta = run(file_store, GAPPY, TEST_FRACTION="0.25")
    assert (meta["row_count"], meta["test_row_count"], meta["grid"]["rows_added"]) == (8, 2, 3)
    assert meta["test_follows_train"] is True


def test_a_row_off_the_grid_is_refused(file_store):
    raw = csv("time,down", "2020-01-01 00:00,1", "2020-01-01 01:00,2", "2020-01-01 02:20,3", "2020-01-01 03:00,4")
    with pytest.raises(DataError, match=r"s/train\.csv: timestamp 2020-01-01 02:20:00 in row 3 \(column 'time'\) is "
                                        r"off the grid of one row every 3600 s from 2020-01-01 00:00:00"):
        run(file_store, raw)
    with pytest.raises(DataError, match=r"s/test\.csv: timestamp 2020-01-01 10:30:00 in row 1"):
        run(file_store, GAPPY, csv("time,down", "2020-01-01 10:30,1"))


@pytest.mark.parametrize("step, rows, periods", [
    ("2min", 720 * 2 - 1, []),
    ("2min", 720 * 2, [720]),
    ("2min", 5040 * 2, [720, 5040]),
    ("1h", 24 * 14, [24, 168]),
    ("7min", 10_000, [1440]),  # a day is no whole number of 7 minutes, a week is
    ("11min", 10_000, []),
    ("1D", 100, [7]),
])
def test_seasonal_periods_need_two_cycles_of_history(step, rows, periods):
    assert seasonal_periods(rows, pd.Timedelta(step)) == periods


# ---------------------------------------------------------------- real data

def test_bike_data_end_to_end_through_the_embedded_router(tmp_path, capfd):
    objects = tmp_path / "objects"
    ready = upload_dataset(FileStore(objects), "Bike", BIKE)
    router = EmbeddedRouter({"FLTS_OBJECT_DIR": str(objects), **BIKE_ENV}, [routing.deployment("preprocess")])
    router.publish(events.make_event(events.DATASET_READY, "test", ready))
    assert [(d.deployment, d.error) for d in router.run()] == [("preprocess", None)]
    [event] = [e for e in router.published if e["type"] == events.TRAINING_DATA]
    claim = events.parse_data(event)
    meta = get_json(FileStore(objects), claim.bucket, claim.meta_key)

    # data/bike/README.md: 16,637 + 742 rows with 165 missing hours in 75 gaps; hourly, daily and weekly cycles
    assert meta["grid"]["rows_added"] == 165 and meta["grid"]["gaps"] == 75
    assert (claim.rows + claim.test_rows) == 16_637 + 742 + 165
    assert meta["frequency_seconds"] == 3600.0 and meta["seasonal_periods"] == [24, 168]
    assert meta["test_follows_train"] is True
    assert meta["config"]["preprocess"]["timezone"] == "America/New_York"
    train = pq.read_table(objects / claim.bucket / claim.object_key).to_pandas()
    test = pq.read_table(objects / claim.bucket / claim.test_object_key).to_pandas()
    assert train["time"].iloc[0] == pd.Timestamp("2011-01-01 05:00")  # midnight EST in UTC, stored naive
    assert test["time"].iloc[0] == pd.Timestamp("2012-12-01 05:00")
    for frame in (train, test):
        assert frame["time"].dt.tz is None and frame["time"].diff().dropna().eq(pd.Timedelta("1h")).all()
        assert not frame.isna().any().any()
    grid_lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"preprocess_grid"' in x]
    assert [line["rows_added"] for line in grid_lines] == [165]


def column_digest(frame: pd.DataFrame) -> str:
    """The data of a frame, byte for byte: names, dtypes and values of every column."""
    digest = hashlib.sha256()
    for column in frame.columns:
        digest.update(f"{column}:{frame[column].dtype}\n".encode())
        digest.update(frame[column].to_numpy().tobytes())
    return digest.hexdigest()


# Computed with the code before TIMESTAMP_FORMAT, TIMESTAMP_DAYFIRST, TIMEZONE and the grid existed.
LTE_BEFORE = {
    "test file": ("e88d9b4d46aaea2c97b559cb577e3170484bf239700c37efe1ab0b81c4fd50cf",
                  "30d1ebf575ad2d108675a5a7c3fb48b4650059c65a09bab5b75abae761391707",
                  "4843eda42462ec7fcf33edbb31dd4ad09f81c3c1106d01747f982facd5519a7b"),
    "split": ("7503cadd03e022a4982f8c75559e96560bbf72ed2e8bc205eff58d2e61e2231e",
              "ed1f07d8ed0f93aa6226cf17ebda7d1dfbe48de5bb76a5b6e7392ca15d21a927",
              "f88e820e08b5885aeb587b2cbbd89689f04030846815ebc173d31604ffa2b3f7"),
}


@pytest.mark.parametrize("case", sorted(LTE_BEFORE))
def test_lte_output_is_unchanged(case, tmp_path, lte_dir):
    store = FileStore(tmp_path / "objects")
    ready = upload_dataset(store, "PobleSec", lte_dir)
    env = {}
    if case == "split":
        ready, env = ready.model_copy(update={"test_object_key": None}), {"TEST_FRACTION": "0.25"}
    meta = preprocess(store, ready, PreprocessSettings.from_env(env))
    frames = [parquet(store, meta, part).read().to_pandas() for part in ("train", "test")]
    assert (meta["config_hash"], *map(column_digest, frames)) == LTE_BEFORE[case]
    assert meta["grid"]["rows_added"] == 0 and meta["frequency_seconds"] == 120.0 and meta["test_follows_train"]
    assert meta["seasonal_periods"] == [720, 5040]  # 11,945 rows or more: over two weeks of 2 minutes


def test_time_features_follow_the_local_clock_when_a_time_zone_is_set():
    from flts.preprocess.handler import add_time_features

    frame = pd.DataFrame({"time": pd.to_datetime(["2024-07-01 16:00", "2024-01-01 17:00"])})  # UTC
    local = add_time_features(frame, "time", "America/New_York")  # 12:00 local in July (EDT) and January (EST)
    noon = np.array([np.sin(np.pi), np.cos(np.pi)])
    np.testing.assert_allclose(local[["minute_sin", "minute_cos"]].to_numpy(), [noon, noon], atol=1e-9)
    utc = add_time_features(frame, "time")
    assert not np.allclose(utc["minute_cos"].to_numpy(), local["minute_cos"].to_numpy())
