"""MSTL: statsforecast's MSTL + AutoETS, served as seasonal profiles and one weight matrix."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from flts.forecasters import ArtifactError, mstl
from flts.infer.features import InputSpec
from flts.infer.settings import ServingSettings
from flts.train.settings import TrainSettings

HOUR = 3600.0


def settings(**env) -> TrainSettings:
    return TrainSettings.from_env({"MODEL_TYPE": "MSTL", "TARGET_COLUMN": "load", **env})


def seasonal_series(rows: int, seed: int = 0) -> np.ndarray:
    """Hourly: a wandering level with a drift, a daily and a weekly cycle, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    level = 200 + np.cumsum(rng.normal(0.05, 1.0, rows))
    return level + 30 * np.sin(2 * np.pi * t / 24) + 10 * np.sin(2 * np.pi * t / 168) + rng.normal(0, 3, rows)


def test_the_weights_are_the_ets_recursion():
    """window @ weights is the level (+ damped trend) that the recursion reaches from the window."""
    smoothing = mstl.Smoothing("AAdN", alpha=0.3, beta=0.05, phi=0.9)
    window = np.random.default_rng(1).normal(50, 5, 40)
    level, trend = window[0], 0.0
    for value in window[1:]:
        expected = level + smoothing.phi * trend
        level, trend = expected + smoothing.alpha * (value - expected), smoothing.phi * trend + smoothing.beta * (
            value - expected)
    steps = np.cumsum(0.9 ** np.arange(1, 4))
    np.testing.assert_allclose(window @ smoothing.weights(40, 3), level + trend * steps, rtol=1e-12)


def test_the_window_grows_until_the_starting_level_is_forgotten():
    assert mstl.Smoothing("ANNN", alpha=0.9999).window_rows(10, 1024) == 10
    assert mstl.Smoothing("ANNN", alpha=0.1).window_rows(10, 1024) == 45  # 0.9^44 < 1 %
    assert mstl.Smoothing("ANNN", alpha=0.001).window_rows(10, 1024) == 1024


def test_seasons_need_two_periods_of_data():
    assert mstl.seasons((24, 168), HOUR, 400) == (24, 168)
    assert mstl.seasons((24, 168), HOUR, 300) == (24,)
    assert mstl.seasons((24, 168), 120.0, 1500) == (720,)  # the LTE grid: a day is 720 rows
    assert mstl.seasons((24,), 86400 * 2, 1000) == ()  # a period shorter than two rows


def test_served_forecasts_follow_statsforecasts_own_filter():
    """Past the training rows, the served model forecasts what statsforecast's MSTL continuation and
    its ETS state filtered forward (forward_ets, fitted parameters) give, within the small weight the
    window leaves to the starting level."""
    from statsforecast.ets import forward_ets

    y = seasonal_series(24 * 7 * 6)
    train_rows, horizon = 24 * 7 * 5, 6
    seconds = np.arange(len(y)) * HOUR
    model = mstl.fit_model(settings(HORIZON=str(horizon)), y[:train_rows], seconds[:train_rows], HOUR, (24, 168))
    assert model.smoothing.alpha < 0.9  # the window has a memory worth checking
    length = model.input_seq_len
    served, truth = mstl.MstlPredictor(model).forecast_rows(y[train_rows - length:], seconds[train_rows - length:])

    # The same forecasts from statsforecast's objects: MSTL's fitted seasonal parts, then its continuation.
    from statsforecast.models import MSTL, AutoETS
    jump = 2
    reference = MSTL(season_length=[24, 168], trend_forecaster=AutoETS(model="AZN"),
                     stl_kwargs={"trend_jump": jump, "low_pass_jump": jump}).fit(y[:train_rows])
    ahead = len(y) - train_rows
    continued = reference.predict(ahead)["mean"] - reference.trend_forecaster.predict(ahead)["mean"]
    fitted = reference.model_.filter(regex="^seasonal").sum(axis=1).to_numpy()
    season = np.concatenate([fitted, continued])
    states = forward_ets(reference.trend_forecaster.model_, y - season)["states"]
    origins = train_rows + np.arange(len(served))
    trend = states[origins, 1] if states.shape[1] > 1 else np.zeros(len(origins))
    steps = np.cumsum(model.smoothing.phi ** np.arange(1, horizon + 1))
    expected = states[origins, 0][:, None] + trend[:, None] * steps + season[origins[:, None] + np.arange(horizon)]
    assert np.max(np.abs(served - expected)) < 0.05 * y.std()
    # and it forecasts: far better than the mean, on held-out rows
    assert np.sqrt(np.mean((served - truth) ** 2)) < 0.5 * truth.std()


def test_the_model_file_round_trips_and_refuses_what_is_not_one():
    model = mstl.MstlModel(HOUR, 0.0, (2,), ((1.0, -1.0),), mstl.Smoothing("ANNN", 0.5), 3, 2)
    assert mstl.MstlModel.from_json(model.to_json(), "x") == model
    with pytest.raises(ArtifactError, match="the artifact is not an MSTL model JSON"):
        mstl.MstlModel.from_json(b'{"format": "onnx"}', "the artifact")
    broken = json.loads(model.to_json())
    broken["profiles"] = [[1.0]]
    with pytest.raises(ArtifactError, match="each profile as long as its period"):
        mstl.MstlModel.from_json(json.dumps(broken).encode(), "x")


def test_serving_checks_the_model_against_the_pointer():
    raw = mstl.MstlModel(HOUR, 0.0, (), (), mstl.Smoothing("ANNN", 0.5), 3, 2).to_json()
    serving = ServingSettings.from_env({})
    with pytest.raises(ArtifactError, match="reads 3 rows and forecasts 2 steps; the pointer says 4 and 2"):
        mstl.load_for_serving(raw, InputSpec(4, 2, ("load",), "load"), serving)
    with pytest.raises(ArtifactError, match="reads the target 'load', which is not among"):
        mstl.load_for_serving(raw, InputSpec(3, 2, ("temp",), "load"), serving)
    predictor = mstl.load_for_serving(raw, InputSpec(3, 2, ("temp", "load"), "load"), serving)
    x = np.array([[[0, 1], [0, 1], [0, 3]]], np.float32)  # level: 1, then halfway to 1, then to 3
    np.testing.assert_allclose(predictor.predict(x, np.zeros(1), np.ones(1)), [[2.0, 2.0]])


def test_infer_serves_it_without_statsforecast():
    code = """
import sys, numpy as np
from flts.forecasters import mstl
from flts.infer.features import InputSpec
from flts.infer.settings import ServingSettings
raw = mstl.MstlModel(3600.0, 0.0, (24,), (tuple(range(24)),), mstl.Smoothing("ANNN", 0.5), 4, 3).to_json()
p = mstl.load_for_serving(raw, InputSpec(4, 3, ("load",), "load"), ServingSettings.from_env({}))
out = p.predict(np.zeros((2, 4, 1), np.float32), np.array([0.0, 3600.0]), np.ones(2))
assert out.shape == (2, 3), out.shape
print(sorted({m.split('.')[0] for m in sys.modules} & {"statsforecast", "numba", "pandas", "torch"}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
