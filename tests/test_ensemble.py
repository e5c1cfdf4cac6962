"""ENSEMBLE: members of different formats, windows and columns, averaged; the file refuses what is not one."""
from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from flts.dev.testing import persistence_onnx
from flts.eval import ensemble as choose
from flts.forecasters import ArtifactError, ensemble, mstl
from flts.infer.features import InputSpec
from flts.infer.settings import ServingSettings
from flts.metrics import TargetScale

HOUR = 3600.0


def members() -> list[ensemble.Member]:
    """An ONNX graph reading 4 rows of (load, temp): 2 x the last load + 1 per step; an MSTL model
    reading 3 rows of load (no season, alpha 0.5)."""
    onnx_sig = {"format": "onnx", "feature_columns": ["load", "temp"], "target": "load", "input_seq_len": 4,
                "output_seq_len": 2, "timestamp_column": "time", "model_type": "GRU"}
    mstl_sig = {"format": "mstl-json", "feature_columns": ["load"], "target": "load", "input_seq_len": 3,
                "output_seq_len": 2, "timestamp_column": "time", "model_type": "MSTL"}
    model = mstl.MstlModel(HOUR, 0.0, (), (), mstl.Smoothing("ANNN", 0.5), 3, 2).to_json()
    return [ensemble.Member("GRU", "run-a", onnx_sig, persistence_onnx(4, 2, 2, 0, factor=2.0, bias=1.0)),
            ensemble.Member("MSTL", "run-b", mstl_sig, model)]


def test_each_member_reads_its_rows_and_columns_and_the_forecasts_are_averaged():
    spec = InputSpec(4, 2, ("temp", "load"), "load", "time", HOUR)  # the ensemble's: the union, the longest window
    predictor = ensemble.load_for_serving(ensemble.to_json(members()), spec, ServingSettings.from_env({}))
    loads = np.array([[5.0, 1.0, 1.0, 3.0]])
    x = np.stack([np.full((1, 4), 20.0), loads], axis=2).astype(np.float32)  # columns: temp, load
    graph = 2 * 3.0 + np.array([1.0, 2.0])
    smoothing = 2.0  # from 1, 1, 3 (the last three rows): 1, 1, then halfway to 3
    np.testing.assert_allclose(predictor.predict(x, np.zeros(1), np.ones(1)), [(graph + smoothing) / 2])


def test_scoring_averages_the_members_on_the_same_windows(tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(ensemble.to_json(members()))
    frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=8, freq="h"),
                          "load": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], "temp": 20.0})
    forecast, truth = ensemble.load_for_scoring(path, {"input_seq_len": 4}).forecast(frame, 4)
    np.testing.assert_allclose(truth, [[5, 6], [6, 7], [7, 8]])
    last = np.array([4.0, 5.0, 6.0])
    graph = 2 * last[:, None] + [1.0, 2.0]
    smoothing = last - 0.75  # the last 3 rows, rising by 1: level = the first, then +0.5, then +0.75 more
    np.testing.assert_allclose(forecast, (graph + smoothing[:, None]) / 2)


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.update(format="onnx"), "expected 'ensemble-json'"),
    (lambda d: d["members"].pop(), "needs at least two members, it has 1"),
    (lambda d: d["members"][1]["signature"].update(output_seq_len=3), "different horizons"),
    (lambda d: d["members"][0].update(model="***"), "not an ensemble model JSON"),
])
def test_what_is_not_an_ensemble_is_refused_naming_the_problem(change, problem):
    data = orjson.loads(ensemble.to_json(members()))
    change(data)
    with pytest.raises(ArtifactError, match=problem):
        ensemble.members_of(orjson.dumps(data), "model.json")


def test_a_member_the_pointer_does_not_cover_is_refused():
    spec = InputSpec(3, 2, ("load", "temp"), "load")  # shorter than the GRU member's 4 rows
    with pytest.raises(ArtifactError, match="member GRU reads 4 rows"):
        ensemble.load_for_serving(ensemble.to_json(members()), spec, ServingSettings.from_env({}))


def test_the_best_mean_must_beat_the_best_single_candidate_on_validation():
    truth = np.linspace(10, 20, 60).reshape(30, 2)
    scale = TargetScale.fit(np.linspace(10, 20, 100))
    over, under, far = (choose.Validation(truth + e, truth) for e in (1.0, -1.0, 5.0))
    best = choose.best_mean([far, over, None, under], scale, max_members=3)
    assert best.members == [1, 3] and best.val_metrics["score"] == pytest.approx(0.0, abs=1e-12)
    assert choose.best_mean([over, far], scale, max_members=3) is None  # their mean is worse than `over`
    assert choose.best_mean([over, under], scale, max_members=1) is None
    shifted = choose.Validation(truth[1:] - 1.0, truth[1:])  # other target rows: left out
    assert choose.best_mean([over, shifted], scale, max_members=3) is None
