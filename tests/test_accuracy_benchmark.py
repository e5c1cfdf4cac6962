"""A smoke test of benchmarks/accuracy.py: --quick on ElBorn, h = 1 (its figures are printed, not asserted)."""
from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

PEERS = ("persistence", "seasonal naive, day", "MSTL", "LightGBM")


@pytest.fixture
def accuracy(repo, monkeypatch):
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))  # the script imports its sibling modules
    import accuracy

    return accuracy


def test_quick_run_scores_the_promoted_model_and_every_peer(accuracy, tmp_path):
    pytest.importorskip("statsforecast")
    pytest.importorskip("lightgbm")
    out = tmp_path / "accuracy.json"
    status = accuracy.main(["--quick", "--datasets", "ElBorn", "--horizons", "1", "--out", str(out),
                            "--workdir", str(tmp_path / "work")])
    assert status in (0, 1)  # 1: a target missed, which a two-epoch model may well do

    report = orjson.loads(out.read_bytes())
    [case] = report["results"]
    assert (case["dataset"], case["horizon"], case["first_scored_test_row"]) == ("ElBorn", 1, 0)
    assert case["lookback_rows"] >= 10 and case["windows"] == case["test_rows"]  # every test row is a target
    rows = case["rows"]
    promoted = [r for r in rows.values() if r["kind"] == "promoted"]
    peers = {name: r for name, r in rows.items() if r["kind"] == "peer"}
    assert len(promoted) == 1 and math.isfinite(promoted[0]["nrmse"])
    for peer in PEERS:
        [found] = [r for name, r in peers.items() if name.startswith(peer)]
        assert math.isfinite(found["nrmse"]) and math.isfinite(found["mase"]) and math.isfinite(found["mape"])
    assert case["paper"]["published"]["persistence"] == pytest.approx(case["paper"]["nrmse"]["persistence"], abs=5e-4)
    assert {t["check"].split(":")[0] for t in report["targets"]} >= {"ElBorn h=1"}
    assert (tmp_path / "accuracy-ElBorn.png").stat().st_size > 10_000


def test_a_bad_dataset_name_exits_2_with_one_line(accuracy, capsys):
    assert accuracy.main(["--datasets", "Nowhere", "--horizons", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("accuracy: unknown dataset(s) ['Nowhere']") and "\n" not in err
    assert accuracy.main(["--datasets", "ElBorn", "--horizons", "week"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


def test_mape_skips_zero_targets_and_intervals_count_targets_inside(repo, monkeypatch):
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    from accuracy_report import interval_metrics, mape

    truth = np.array([[0.0, 10.0], [20.0, 40.0]])
    forecast = np.array([[5.0, 11.0], [18.0, 40.0]])
    assert mape(truth, forecast) == pytest.approx((10 + 10 + 0) / 3)  # the zero target is left out
    half = np.repeat(np.array([[1.0, 0.5], [5.0, 2.0]])[:, None, :], 2, axis=1)  # [levels, windows, steps]
    figures = interval_metrics(truth, forecast, [0.5, 0.9], half)
    assert figures["interval_coverage"] == [0.25, 1.0]  # |errors| 5, 1, 2, 0 against the half-widths per step
    assert figures["interval_width"] == pytest.approx([2 * 0.75 / 17.5, 2 * 3.5 / 17.5])
