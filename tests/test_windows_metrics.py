"""Sliding windows and comparable metrics, checked against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flts.metrics import WEIGHTS, TargetScale, regression_metrics, score
from flts.windows import WindowError, make_windows, window_count

# 6 rows, 2 features: row r = [2r, 2r+1]; the target is 10 + r
FEATURES = np.arange(12, dtype=np.float64).reshape(6, 2)
TARGET = np.arange(10, 16, dtype=np.float64)


def test_windows_shapes_and_alignment():
    x, y = make_windows(FEATURES, TARGET, input_len=2, output_len=2)
    assert window_count(6, 2, 2) == 3
    assert x.shape == (3, 2, 2) and y.shape == (3, 2)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.flags.c_contiguous and y.flags.c_contiguous
    # window i: input rows i, i+1; output = target of rows i+2, i+3
    assert x[0].tolist() == [[0, 1], [2, 3]]
    assert x[1].tolist() == [[2, 3], [4, 5]]
    assert x[2].tolist() == [[4, 5], [6, 7]]
    assert y.tolist() == [[12, 13], [13, 14], [14, 15]]


def test_one_step_windows_use_every_row():
    x, y = make_windows(FEATURES, TARGET, input_len=3, output_len=1)
    assert x.shape == (3, 3, 2)
    assert x[-1].tolist() == [[4, 5], [6, 7], [8, 9]]  # rows 2..4; row 5 is its output
    assert y[:, 0].tolist() == [13, 14, 15]  # the row right after each input window


def test_windows_are_copies_not_views():
    features = FEATURES.copy()
    x, _ = make_windows(features, TARGET, 2, 2)
    features[0, 0] = 99
    assert x[0, 0, 0] == 0


def test_exactly_enough_rows_give_one_window():
    x, y = make_windows(FEATURES[:4], TARGET[:4], 2, 2)
    assert x.shape == (1, 2, 2) and y.tolist() == [[12, 13]]


@pytest.mark.parametrize("rows, input_len, output_len", [(3, 2, 2), (0, 1, 1), (5, 5, 1)])
def test_too_few_rows(rows, input_len, output_len):
    with pytest.raises(WindowError, match=f"{rows} rows are too few for one window of {input_len} input "
                                          f"\\+ {output_len} output rows"):
        make_windows(FEATURES[:rows], TARGET[:rows], input_len, output_len)


@pytest.mark.parametrize("input_len, output_len", [(0, 1), (1, 0), (-1, 2)])
def test_window_lengths_must_be_positive(input_len, output_len):
    with pytest.raises(WindowError, match="window lengths must be >= 1"):
        make_windows(FEATURES, TARGET, input_len, output_len)


def test_mismatched_or_misshapen_arrays():
    with pytest.raises(WindowError, match="features have 6 rows but the target has 5"):
        make_windows(FEATURES, TARGET[:5], 2, 1)
    with pytest.raises(WindowError, match=r"features must be \[rows, n_features\]"):
        make_windows(TARGET, TARGET, 2, 1)


# ---------------------------------------------------------------- metrics

def test_target_scale_fit():
    scale = TargetScale.fit(np.array([1.0, 2.0, 3.0, 4.0]))
    assert scale.mean == 2.5
    assert scale.std == pytest.approx(math.sqrt(1.25))  # population std
    assert scale.naive_mae == 1.0  # |2-1|, |3-2|, |4-3|


def test_target_scale_of_a_constant_does_not_divide_by_zero():
    scale = TargetScale.fit(np.array([3.0, 3.0, 3.0]))
    assert (scale.mean, scale.std, scale.naive_mae) == (3.0, 1.0, 1.0)


def test_regression_metrics_known_values():
    # errors [1, 0, 0, -2]; scaled by std 2: [0.5, 0, 0, -1]
    scale = TargetScale(mean=0.0, std=2.0, naive_mae=0.5)
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 3.0, 2.0]), scale)
    expected = {
        "mse": 0.3125,  # (0.25 + 1) / 4
        "rmse": math.sqrt(0.3125),
        "mae": 0.375,  # (0.5 + 1) / 4
        "rmse_orig": math.sqrt(1.25),  # (1 + 4) / 4
        "mae_orig": 0.75,
        "nrmse": math.sqrt(1.25) / 2.5,  # mean(y_true) = 2.5
        "mase": 1.5,  # 0.75 / 0.5
        "score": 0.5 * math.sqrt(0.3125) + 0.3 * 0.375 + 0.2 * 0.3125,
    }
    assert set(m) == set(expected)
    for name, value in expected.items():
        assert m[name] == pytest.approx(value), name


def test_metrics_pool_all_horizons():
    scale = TargetScale(mean=0.0, std=1.0, naive_mae=1.0)
    flat = regression_metrics(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 6]), scale)
    shaped = regression_metrics(np.array([[1.0, 2], [3, 4]]), np.array([[1.0, 2], [3, 6]]), scale)
    assert flat == shaped and flat["mae"] == 0.5


def test_perfect_forecast_scores_zero():
    m = regression_metrics(np.array([1.0, 5.0]), np.array([1.0, 5.0]), TargetScale.fit(np.array([0.0, 2.0])))
    assert m["score"] == 0 and m["rmse"] == 0 and m["mase"] == 0


def test_metrics_refuse_bad_predictions():
    scale = TargetScale(mean=0.0, std=1.0, naive_mae=1.0)
    with pytest.raises(ValueError, match="cannot score 3 predictions against 2 targets"):
        regression_metrics(np.zeros(2), np.zeros(3), scale)
    with pytest.raises(ValueError, match="cannot score 0 predictions"):
        regression_metrics(np.zeros(0), np.zeros(0), scale)
    with pytest.raises(ValueError, match="NaN or inf"):
        regression_metrics(np.zeros(2), np.array([0.0, np.nan]), scale)


def test_score_weights():
    assert WEIGHTS == {"rmse": 0.5, "mae": 0.3, "mse": 0.2}
    assert score({"rmse": 1.0, "mae": 0.0, "mse": 0.0}) == 0.5
    assert score({"rmse": 0.0, "mae": 1.0, "mse": 0.0}) == 0.3
    assert score({"rmse": 0.0, "mae": 0.0, "mse": 1.0}) == 0.2
    assert score({"rmse": 2.0, "mae": 3.0, "mse": 4.0, "ignored": 100.0}) == pytest.approx(1.0 + 0.9 + 0.8)


def test_lower_score_is_the_better_model():
    truth = np.array([10.0, 12.0, 11.0, 13.0])
    scale = TargetScale.fit(truth)
    close = regression_metrics(truth, truth + 0.1, scale)["score"]
    far = regression_metrics(truth, truth + 2.0, scale)["score"]
    assert close < far


def test_lookback_comes_from_the_training_tail_only_when_the_test_split_follows_it():
    from flts.windows import lookback_rows

    times = pd.date_range("2020-01-01", periods=100, freq="h")
    assert lookback_rows(times[:80], times[80:], 24) == 24  # next grid step: every test row is a target
    assert lookback_rows(times[:80], times[81:], 24) == 0  # a gap: the test file stands alone
    assert lookback_rows(times[:10], times[10:], 24) == 0  # too little training history to lend
