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


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_conformal_intervals_cover_new_data_at_their_level(level):
    """Gaussian noise of known scale: half-widths near the true quantile, coverage near nominal."""
    from flts.metrics import conformal_half_widths

    rng = np.random.default_rng(7)
    sigma = np.array([1.0, 3.0])  # noise grows with the horizon step
    calibration, fresh = rng.normal(0, sigma, (2000, 2)), rng.normal(0, sigma, (20000, 2))
    half = np.array(conformal_half_widths(calibration, np.zeros_like(calibration), [level])[0])
    z = {0.8: 1.2816, 0.95: 1.9600}[level]
    np.testing.assert_allclose(half, z * sigma, rtol=0.08)
    coverage = np.mean(np.abs(fresh) <= half, axis=0)
    assert np.all(np.abs(coverage - level) < 0.02), coverage


def test_scaled_intervals_follow_a_change_of_volatility_that_fixed_ones_miss():
    """Noise whose scale shifts between calibration (quiet) and new data (volatile), visible in the
    series' recent changes: intervals scaled by recent_change keep their coverage, fixed ones do not."""
    from flts.metrics import conformal_intervals, window_half_widths, window_scales

    rng = np.random.default_rng(3)
    sigma = np.repeat([1.0, 1.0, 4.0], 3000)  # calibration ends at 6000; the new data is 4x as volatile
    series = 100 + rng.normal(0, sigma)
    forecast = np.full(len(series), 100.0)  # the level, known: the residuals are the noise
    rows, calibration = 168, slice(3000, 6000)
    truth, pred = series[calibration, None], forecast[calibration, None]
    fixed = conformal_intervals(truth, pred, [0.8], series[:6000], 0)
    scaled = conformal_intervals(truth, pred, [0.8], series[:6000], rows)
    assert scaled["scale_rows"] == rows and fixed["scale_rows"] == 0
    new = np.arange(6200, 9000)  # windows whose recent rows lie in the volatile part
    inside = {}
    for name, intervals in (("fixed", fixed), ("scaled", scaled)):
        half = window_half_widths(intervals, window_scales(series, new, rows))[0, :, 0]
        inside[name] = np.mean(np.abs(series[new] - 100.0) <= half)
    assert abs(inside["scaled"] - 0.8) < 0.03, inside
    assert inside["fixed"] < 0.4, inside


def test_a_burst_of_volatility_widens_intervals_at_once_and_calm_keeps_their_level():
    """Bursts of 4x volatility after a calm calibration: in a burst's first 100 rows the 168-row scale
    still remembers the calm and its 80 % interval under-covers; with the 24-row scale beside it
    the interval widens at once. Once calm returns, both cover their level."""
    from flts.metrics import conformal_intervals, window_half_widths, window_scales

    rng = np.random.default_rng(5)
    series = 100 + rng.normal(0, np.repeat([1.0] * 6 + [4.0, 1.0] * 10, 500))
    truth, pred = series[1000:3000, None], np.full((2000, 1), 100.0)
    burst_starts, calm_starts = 3000 + 1000 * np.arange(10), 3500 + 1000 * np.arange(10)
    early_burst = np.concatenate([np.arange(s + 24, s + 124) for s in burst_starts])
    settled_calm = np.concatenate([np.arange(s + 200, s + 500) for s in calm_starts])
    coverage = {}
    for short in (0, 24):
        intervals = conformal_intervals(truth, pred, [0.8], series[:3000], 168, short)
        assert intervals["short_scale_rows"] == short
        for name, rows in (("burst", early_burst), ("calm", settled_calm)):
            half = window_half_widths(intervals, window_scales(series, rows, 168, short))[0, :, 0]
            coverage[name, short] = np.mean(np.abs(series[rows] - 100.0) <= half)
    assert coverage["burst", 0] < 0.65 and abs(coverage["burst", 24] - 0.8) < 0.05, coverage
    assert abs(coverage["calm", 0] - 0.8) < 0.03 and abs(coverage["calm", 24] - 0.8) < 0.03, coverage


def test_the_short_scale_never_narrows_the_long_one():
    from flts.metrics import recent_change

    calm_end = np.array([0.0, 4.0, 0.0, 4.0, 4.0, 4.0])  # changes 4, 4, 4, 0, 0
    np.testing.assert_allclose(recent_change(calm_end, 2), recent_change(calm_end))
    burst_end = np.array([4.0, 4.0, 4.0, 0.0, 4.0, 0.0])  # changes 0, 0, 4, 4, 4
    np.testing.assert_allclose([recent_change(burst_end), recent_change(burst_end, 2)], [2.4, 4.0])


def test_recent_change_is_floored_on_a_flat_stretch():
    from flts.metrics import recent_change

    np.testing.assert_allclose(recent_change(np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])), [1.5, 0.005])


def test_conformal_intervals_need_windows():
    from flts.metrics import conformal_half_widths

    with pytest.raises(ValueError, match="no held-out windows"):
        conformal_half_widths(np.zeros((0, 1)), np.zeros((0, 1)), [0.9])
