"""Preprocess: pure data logic (imputation, time features, clipping) and refusals of bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flts.events import DatasetReady, EventError
from flts.preprocess.handler import (
    DataError,
    PreprocessSettings,
    add_time_features,
    fit_clip_bounds,
    impute,
    preprocess,
    read_csv,
    split_by_time,
    transform,
)
from flts.settings import ConfigError

NAN = float("nan")
SETTINGS = PreprocessSettings()


def frame(values: dict, start="2020-01-06 00:00", freq="2min") -> pd.DataFrame:
    rows = len(next(iter(values.values())))
    return pd.DataFrame({"time": pd.date_range(start, periods=rows, freq=freq), **values})


def csv(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- imputation

def test_impute_interpolates_inside_and_fills_the_edges():
    out = impute(frame({
        "inside": [1.0, NAN, NAN, 4.0],
        "leading": [NAN, NAN, 3.0, 5.0],
        "trailing": [2.0, 6.0, NAN, NAN],
        "empty": [NAN, NAN, NAN, NAN],
    }), "time")
    assert out["inside"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert out["leading"].tolist() == [3.0, 3.0, 3.0, 5.0]
    assert out["trailing"].tolist() == [2.0, 6.0, 6.0, 6.0]
    assert out["empty"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert not out.isna().any().any()
    assert list(out.columns) == ["time", "inside", "leading", "trailing", "empty"]


def test_impute_leaves_complete_columns_and_times_alone():
    original = frame({"down": [5.0, 7.0, 1.0]})
    out = impute(original, "time")
    pd.testing.assert_frame_equal(out, original)


def test_read_csv_keeps_empty_cells_for_imputation_and_turns_inf_into_gaps():
    raw = csv("time,down,up", "2020-01-01 00:00,1,", "2020-01-01 00:02,,inf", "2020-01-01 00:04,3,4")
    parsed = read_csv(raw, SETTINGS, "x.csv")
    assert parsed["down"].isna().tolist() == [False, True, False]
    assert parsed["up"].isna().tolist() == [True, True, False]
    filled = impute(parsed, "time")
    assert filled["down"].tolist() == [1.0, 2.0, 3.0]
    assert filled["up"].tolist() == [4.0, 4.0, 4.0]


# ---------------------------------------------------------------- time features

def test_time_features_are_cyclic_and_bounded():
    times = pd.date_range("2020-01-06 00:00", periods=7 * 24 * 30, freq="2min")  # a week from a Monday
    out = add_time_features(pd.DataFrame({"time": times, "down": 1.0}), "time")
    for column in ("minute_sin", "minute_cos", "dow_sin", "dow_cos"):
        assert out[column].between(-1, 1).all(), column
    assert np.allclose(out["minute_sin"] ** 2 + out["minute_cos"] ** 2, 1.0)
    assert np.allclose(out["dow_sin"] ** 2 + out["dow_cos"] ** 2, 1.0)


def test_time_features_known_values():
    times = pd.to_datetime(["2020-01-06 00:00", "2020-01-06 06:00", "2020-01-06 12:00", "2020-01-09 18:00"])
    out = add_time_features(pd.DataFrame({"time": times, "down": 0.0}), "time")
    assert np.allclose(out["minute_sin"], [0, 1, 0, -1], atol=1e-12)
    assert np.allclose(out["minute_cos"], [1, 0, -1, 0], atol=1e-12)
    # Monday = day 0, Thursday = day 3
    assert np.allclose(out["dow_sin"], [0, 0, 0, np.sin(2 * np.pi * 3 / 7)])
    assert np.allclose(out["dow_cos"], [1, 1, 1, np.cos(2 * np.pi * 3 / 7)])


def test_late_evening_sits_next_to_midnight_and_sunday_next_to_monday():
    times = pd.to_datetime(["2020-01-05 23:58", "2020-01-06 00:00", "2020-01-06 12:00"])  # Sun, Mon, Mon noon
    out = add_time_features(pd.DataFrame({"time": times, "down": 0.0}), "time")
    point = out[["minute_sin", "minute_cos"]].to_numpy()
    assert np.linalg.norm(point[0] - point[1]) < 0.01  # 2 minutes apart on the clock circle
    assert np.linalg.norm(point[2] - point[1]) > 1.9  # noon is opposite midnight
    day = out[["dow_sin", "dow_cos"]].to_numpy()
    assert np.linalg.norm(day[0] - day[1]) == pytest.approx(2 * np.sin(np.pi / 7))  # one step on the week circle


# ---------------------------------------------------------------- outlier clipping

def clip_settings(**kw) -> PreprocessSettings:
    return PreprocessSettings(clip_outliers=True, clip_quantiles=(0.1, 0.9), time_features=False, **kw)


def test_clipping_uses_bounds_fitted_on_train_only():
    train = frame({"down": [float(v) for v in range(11)]})  # 0..10: 10%/90% quantiles are 1 and 9
    test = frame({"down": [-50.0, 5.0, 1000.0]}, start="2020-01-07")
    bounds = fit_clip_bounds(train, "time", (0.1, 0.9))
    assert bounds == {"down": (1.0, 9.0)}
    out_train, out_test = transform(train, test, clip_settings())
    assert out_test["down"].tolist() == [1.0, 5.0, 9.0]
    assert out_train["down"].min() == 1.0 and out_train["down"].max() == 9.0


def test_clip_bounds_do_not_depend_on_the_test_part():
    train = frame({"down": [float(v) for v in range(11)], "up": [float(v * v) for v in range(11)]})
    calm = frame({"down": [5.0], "up": [5.0]}, start="2020-01-07")
    wild = frame({"down": [1e9], "up": [-1e9]}, start="2020-01-07")
    train_a, test_a = transform(train, calm, clip_settings())
    train_b, test_b = transform(train, wild, clip_settings())
    pd.testing.assert_frame_equal(train_a, train_b)
    assert test_a["down"].tolist() == [5.0] and test_a["up"].tolist() == [5.0]
    assert test_b["down"].tolist() == [9.0] and test_b["up"].tolist() == [1.0]  # train's own bounds


def test_no_clipping_by_default():
    train = frame({"down": [0.0, 1.0, 2.0]})
    test = frame({"down": [1000.0]}, start="2020-01-07")
    _, out_test = transform(train, test, PreprocessSettings(time_features=False))
    assert out_test["down"].tolist() == [1000.0]


def test_transform_imputes_both_parts_and_adds_features():
    train = frame({"down": [1.0, NAN, 3.0], "up": [NAN, NAN, NAN]})
    test = frame({"down": [NAN, 4.0], "up": [1.0, NAN]}, start="2020-01-07")
    out_train, out_test = transform(train, test, SETTINGS)
    assert list(out_train.columns) == ["time", "down", "up", "minute_sin", "minute_cos", "dow_sin", "dow_cos"]
    assert list(out_test.columns) == list(out_train.columns)
    assert out_train["down"].tolist() == [1.0, 2.0, 3.0] and out_train["up"].tolist() == [0.0] * 3
    assert out_test["down"].tolist() == [4.0, 4.0] and out_test["up"].tolist() == [1.0, 1.0]
    assert not out_train.isna().any().any() and not out_test.isna().any().any()


def test_split_by_time_keeps_order_and_fraction():
    whole = frame({"down": [float(v) for v in range(10)]})
    train, test = split_by_time(whole, 0.2)
    assert train["down"].tolist() == [float(v) for v in range(8)]
    assert test["down"].tolist() == [8.0, 9.0]
    with pytest.raises(DataError, match="too few"):
        split_by_time(whole.iloc[:1], 0.2)
    with pytest.raises(DataError, match="TEST_FRACTION"):
        split_by_time(whole, 1.5)


# ---------------------------------------------------------------- read_csv: good and bad input

def test_read_csv_parses_times_and_numbers():
    parsed = read_csv(csv("time,down,flag", "2020-01-01 00:00,1,True", "2020-01-01 00:02,2.5,False"), SETTINGS, "x.csv")
    assert str(parsed["time"].dtype).startswith("datetime64")
    assert parsed["down"].tolist() == [1.0, 2.5]
    assert parsed["flag"].tolist() == [1.0, 0.0]


def test_read_csv_numeric_timestamps_are_unix_seconds():
    parsed = read_csv(csv("time,down", "1577836800,1", "1577836920,2"), SETTINGS, "x.csv")
    assert parsed["time"].tolist() == [pd.Timestamp("2020-01-01 00:00"), pd.Timestamp("2020-01-01 00:02")]
    with pytest.raises(DataError, match="Unix seconds"):
        read_csv(csv("time,down", "1577836800000,1", "1577836920000,2"), SETTINGS, "x.csv")


def test_read_csv_honours_timestamp_target_and_drop_settings():
    settings = PreprocessSettings(timestamp_column="when", target="load", drop_columns=("site",))
    parsed = read_csv(csv("when,load,site", "2020-01-01,1,abc", "2020-01-02,2,abd"), settings, "x.csv")
    assert list(parsed.columns) == ["when", "load"]


BAD_CSV = {
    "no timestamp column": (csv("when,down", "2020-01-01,1"), r"x\.csv: no timestamp column 'time'.*TIMESTAMP_COLUMN"),
    "non-numeric column": (csv("time,down,name", "2020-01-01 00:00,1,a", "2020-01-01 00:02,2,b"),
                           r"x\.csv: non-numeric columns 'name' \(e\.g\. 'a'\)"),
    "empty file": (b"", r"x\.csv: the file is empty"),
    "blank file": (b"  \n\n", r"x\.csv: the file is empty"),
    "header only": (b"time,down\n", r"x\.csv: the file has a header but no rows"),
    "duplicate timestamps": (csv("time,down", "2020-01-01 00:00,1", "2020-01-01 00:02,2", "2020-01-01 00:02,3"),
                             r"x\.csv: duplicate timestamp 2020-01-01 00:02:00 in row 3"),
    "unsorted timestamps": (csv("time,down", "2020-01-01 00:02,1", "2020-01-01 00:00,2"),
                            r"x\.csv: timestamps are not sorted: row 2 \(2020-01-01 00:00:00\) comes before row 1"),
    "unparseable timestamp": (csv("time,down", "2020-01-01 00:00,1", "yesterday-ish,2"),
                              r"x\.csv: timestamp 'yesterday-ish' in row 2 cannot be parsed"),
    "empty timestamp": (csv("time,down", "2020-01-01 00:00,1", ",2"), r"x\.csv: empty timestamp in row 2"),
    "mixed utc offsets": (csv("time,down", "2020-01-01 00:00+01:00,1", "2020-01-01 00:02+02:00,2"),
                          r"x\.csv: timestamps cannot be parsed \(Mixed timezones"),
    "missing target": (csv("time,up", "2020-01-01 00:00,1"), r"x\.csv: no target column 'down'.*TARGET_COLUMN"),
    "empty target": (csv("time,down,up", "2020-01-01 00:00,,1", "2020-01-01 00:02,,2"),
                     r"x\.csv: the target column 'down' has no values"),
    "only a timestamp": (csv("time", "2020-01-01 00:00"), r"x\.csv: no numeric column besides the timestamp"),
    # the target cannot be dropped: the hint is to fix the data or choose another target
    "non-numeric target": (csv("time,down,name", "2020-01-01 00:00,1,a", "2020-01-01 00:02,high,b"),
                           r"x\.csv: the target column 'down' \(e\.g\. 'high'\) is not numeric; fix the data or set "
                           r"TARGET_COLUMN to a numeric column$"),
    "too many fields": (csv("time,down", "2020-01-01 00:00,1,5,6", "2020-01-01 00:02,2"),
                        r"x\.csv: rows have more fields than the header"),
    "not csv": (bytes(range(256)), r"x\.csv: not a readable CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_read_csv_refuses_bad_input_with_a_specific_message(case):
    raw, message = BAD_CSV[case]
    with pytest.raises(DataError, match=message):
        read_csv(raw, SETTINGS, "x.csv")


def test_data_errors_are_non_retryable_event_errors():
    assert issubclass(DataError, EventError)


def test_read_csv_refuses_a_file_over_max_upload_bytes():
    raw = csv("time,down", "2020-01-01 00:00,1")
    settings = PreprocessSettings.from_env({"MAX_UPLOAD_BYTES": str(len(raw) - 1)})
    with pytest.raises(DataError, match=rf"x\.csv: {len(raw)} bytes is over the limit of {len(raw) - 1} \(MAX_UPLOAD_BYTES\)"):
        read_csv(raw, settings, "x.csv")
    assert len(read_csv(raw, PreprocessSettings.from_env({"MAX_UPLOAD_BYTES": str(len(raw))}), "x.csv")) == 1


class CountingStore:
    """A FileStore that counts what it downloads."""

    def __init__(self, store):
        self.store, self.downloaded = store, []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get_bytes(self, bucket, key):
        self.downloaded.append(key)
        return self.store.get_bytes(bucket, key)


@pytest.mark.parametrize("too_large", ["s/train.csv", "s/test.csv"])
def test_a_file_over_max_upload_bytes_is_refused_before_it_is_downloaded(file_store, too_large):
    limit = len(TRAIN) + 10
    file_store.put_bytes("raw-data", "s/train.csv", TRAIN)
    file_store.put_bytes("raw-data", "s/test.csv", TRAIN)
    file_store.put_bytes("raw-data", too_large, TRAIN + b"2020-01-01 00:06,4,5\n" * 2)  # over the limit
    size = file_store.size("raw-data", too_large)
    store = CountingStore(file_store)
    request = DatasetReady(bucket="raw-data", object_key="s/train.csv", test_object_key="s/test.csv", identifier="s")
    with pytest.raises(DataError, match=rf"{too_large}: {size} bytes is over the limit of {limit} \(MAX_UPLOAD_BYTES\)"):
        preprocess(store, request, PreprocessSettings.from_env({"MAX_UPLOAD_BYTES": str(limit)}))
    assert too_large not in store.downloaded
    assert list(file_store.list_keys("processed-data")) == []


@pytest.mark.parametrize("env, message", [
    ({"CLIP_QUANTILES": "low,high"}, "CLIP_QUANTILES must be two numbers"),
    ({"CLIP_QUANTILES": "0.1"}, "CLIP_QUANTILES must be two numbers"),
    ({"CLIP_QUANTILES": "0.9,0.1"}, "CLIP_QUANTILES must be two quantiles"),
    ({"DROP_COLUMNS": "down"}, "DROP_COLUMNS must not name the timestamp or target"),
    ({"MAX_UPLOAD_BYTES": "lots"}, "MAX_UPLOAD_BYTES must be an integer"),
    ({"CLIP_OUTLIERS": "maybe"}, "CLIP_OUTLIERS must be a boolean"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessSettings.from_env(env)


# ---------------------------------------------------------------- train + test files

TRAIN = csv("time,down,up", "2020-01-01 00:00,1,2", "2020-01-01 00:02,2,3", "2020-01-01 00:04,3,4")


def run_with_test_file(store, test_raw: bytes) -> dict:
    store.put_bytes("raw-data", "s/train.csv", TRAIN)
    store.put_bytes("raw-data", "s/test.csv", test_raw)
    request = DatasetReady(bucket="raw-data", object_key="s/train.csv", test_object_key="s/test.csv", identifier="s")
    return preprocess(store, request, SETTINGS)


def test_test_file_with_other_columns_is_refused(file_store):
    with pytest.raises(DataError, match=r"s/test\.csv: columns \['down', 'rnti', 'time'\] differ from the training "
                                        r"file's \['down', 'time', 'up'\]"):
        run_with_test_file(file_store, csv("time,down,rnti", "2020-01-01 00:06,1,2"))
    assert list(file_store.list_keys("processed-data")) == []


def test_test_file_overlapping_the_training_period_is_refused(file_store):
    with pytest.raises(DataError, match=r"s/test\.csv: the test data starts at 2020-01-01 00:04:00, not after"):
        run_with_test_file(file_store, csv("time,down,up", "2020-01-01 00:04,1,2", "2020-01-01 00:06,1,2"))


def test_test_file_columns_are_reordered_like_train(file_store):
    meta = run_with_test_file(file_store, csv("time,up,down", "2020-01-01 00:06,9,8"))
    assert meta["row_count"] == 3 and meta["test_row_count"] == 1
    assert meta["column_names"][:3] == ["time", "down", "up"]
