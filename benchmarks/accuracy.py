"""Accuracy benchmark: the pipeline's promoted model side by side with the peers a forecaster would pick.

    .venv/bin/python benchmarks/accuracy.py [--datasets PobleSec ElBorn Bike] [--horizons 1 day]
                                            [--quick] [--out benchmarks/out/accuracy.json]

For every dataset and horizon (h = 1 step, and h = one day: 720 steps on the 2-minute LTE
grid, 24 on the hourly bike data) the whole embedded pipeline runs in a fresh workdir with
HORIZON=h: preprocess → every registered family (`flts.forecasters.names()`) → eval. A family
that refuses the horizon is reported as n/a. Then, on exactly the same target rows (eval's
scoring frame: every test row, the first windows' inputs from the training tail, since the
test file follows the training file on all three datasets):

- the promoted model, and every family's own run;
- the peers, fitted on the training split only, never refitted on test (benchmarks/accuracy_peers.py):
  persistence; seasonal naive, one day and one week back (where the training split holds
  a week); MSTL(day[, week]) + AutoETS filtered forward through the test split; LightGBM on
  target lags and the calendar (one direct model of every step 1..h).

Metrics, all forecast steps pooled: NRMSE = RMSE / mean(y), MASE (MAE / the training target's
in-sample one-step persistence MAE, flts.metrics), MAPE (zero targets skipped), and the
ratio of NRMSE to the best peer's; interval coverage and width for a model that gives
intervals (the promotion pointer's `intervals`), n/a otherwise.
On PobleSec and ElBorn at h = 1 the NRMSE on the paper's windows (the test file alone,
targets from its row 10) is printed beside the paper's figures (arXiv 2211.15220,
data/lte/README.md); a model or peer whose inputs reach further back than the test file
reads them from the training tail there, and is marked as such.

Prints a table per dataset and horizon, writes the JSON (--out) and one PNG per dataset
beside it (forecast vs actual of the promoted model over the last days of test), and
checks the targets (PASS/MISS). Exit status: 0 all targets met, 1 a target missed,
2 a configuration error (a one-line message).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from accuracy_peers import LagBoost, MstlEts
from accuracy_pipeline import PipelineRun, load_families, load_split, run_pipeline
from accuracy_report import Case, Row, case_json, check_targets, plot_dataset, print_case, print_targets

from flts import forecasters
from flts.dev.demo import DATA_DIR as LTE_DIR
from flts.eval import scoring
from flts.metrics import TargetScale
from flts.settings import ConfigError

REPO = Path(__file__).resolve().parent.parent
PAPER = {  # NRMSE on the _test.csv windows, one step ahead (data/lte/README.md)
    "PobleSec": {"lstm_fednova": 0.5063, "lstm_fedavg": 0.5139, "persistence": 0.5704},
    "ElBorn": {"lstm_fednova": 0.4510, "lstm_fedavg": 0.4726, "persistence": 0.5186},
}
PAPER_FIRST_TARGET_ROW = 10  # the paper's windows: 10 input rows of the test file, then the target
QUICK_TRAIN_ROWS = 2500
QUICK_KNOBS = {"EPOCHS": "2", "PATIENCE": "1", "PROPHET_MAX_ROWS": "1000", "LGBM_N_ESTIMATORS": "50"}
CLOCK = {"started": time.perf_counter()}  # progress lines count from main's start
NOTES = {  # what the figures in the JSON mean
    "target_rows": "every test row: eval's scoring frame, inputs of the first windows from the training tail",
    "pooling": "all forecast steps 1..h of all windows pooled",
    "nrmse": "RMSE / mean(y)", "mase": "MAE / in-sample one-step persistence MAE of the training target",
    "mape": "percent, targets equal to zero skipped", "ratio_to_best_peer": "NRMSE / the lowest peer NRMSE",
    "intervals": "from the promotion pointer's intervals when it has them; null otherwise",
    "mstl_ets": "fitted on train; seasonal parts continued, ETS state filtered through test with fixed parameters",
    "lightgbm": "fitted on train per horizon; one direct model of every step, the step a feature",
}


class BenchConfigError(Exception):
    """A bad flag or missing data: one line, exit status 2."""


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: Path
    timestamp_column: str
    target: str

    @property
    def knobs(self) -> dict[str, str]:
        return {"TIMESTAMP_COLUMN": self.timestamp_column, "TARGET_COLUMN": self.target}

    def day_steps(self) -> int:
        times = pd.read_csv(self.folder / f"{self.name}.csv", usecols=[self.timestamp_column], nrows=2000)
        return scoring.season_steps(scoring.frequency_of(times, self.timestamp_column))


def known_datasets() -> dict[str, Dataset]:
    return {"PobleSec": Dataset("PobleSec", LTE_DIR, "time", "down"),
            "ElBorn": Dataset("ElBorn", LTE_DIR, "time", "down"),
            "Bike": Dataset("Bike", REPO / "data" / "bike", "time", "cnt")}


def progress(text: str) -> None:
    print(f"[{elapsed():7.1f}s] {text}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - CLOCK["started"]


# ---------------------------------------------------------------- flags

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(known_datasets()))
    parser.add_argument("--horizons", nargs="+", default=["1", "day"], help="steps ahead, or 'day' (one day of steps)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke test: the last {QUICK_TRAIN_ROWS} training rows, {QUICK_KNOBS['EPOCHS']} epochs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "accuracy.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the pipelines' state here (default: a temp dir)")
    return parser.parse_args(argv)


def resolve_datasets(names: list[str]) -> list[Dataset]:
    known = known_datasets()
    by_lower = {k.lower(): v for k, v in known.items()}
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise BenchConfigError(f"unknown dataset(s) {unknown}; known: {list(known)}")
    chosen = [by_lower[n.lower()] for n in names]
    for ds in chosen:
        for path in (ds.folder / f"{ds.name}.csv", ds.folder / f"{ds.name}_test.csv"):
            if not path.is_file():
                raise BenchConfigError(f"{ds.name}: no file {path}")
    return chosen


def resolve_horizon(token: str, day_steps: int) -> int:
    if token == "day":
        return day_steps
    if not token.isdigit() or int(token) < 1:
        raise BenchConfigError(f"a horizon is a positive number of steps or 'day', got {token!r}")
    return int(token)


def check_settings(quick: bool) -> None:
    """A bad knob in the environment is a configuration error before anything runs."""
    from flts.eval.settings import EvalSettings
    from flts.preprocess.settings import PreprocessSettings
    from flts.train.settings import TrainSettings

    env = {**os.environ, **(QUICK_KNOBS if quick else {})}
    PreprocessSettings.from_env(env)
    EvalSettings.from_env(env)
    for model_type in forecasters.names():
        TrainSettings.from_env({**env, "MODEL_TYPE": model_type})


def horizon_label(steps: int, day_steps: int) -> str:
    return f"1 day ({steps} steps)" if steps == day_steps else f"{steps} step{'s' if steps > 1 else ''}"


# ---------------------------------------------------------------- one dataset

def data_folder(ds: Dataset, quick: bool, workroot: Path) -> Path:
    """The dataset's folder; with --quick a copy whose training file keeps only its last rows."""
    if not quick:
        return ds.folder
    folder = workroot / "quick-data"
    folder.mkdir(parents=True, exist_ok=True)
    pd.read_csv(ds.folder / f"{ds.name}.csv").tail(QUICK_TRAIN_ROWS).to_csv(folder / f"{ds.name}.csv", index=False)
    (folder / f"{ds.name}_test.csv").write_bytes((ds.folder / f"{ds.name}_test.csv").read_bytes())
    return folder


def fit_mstl(split: scoring.Split, ds: Dataset, day: int) -> MstlEts | None:
    """MSTL + ETS on the training split only, once per dataset; a weekly term where two weeks exist."""
    y = split.train[ds.target].to_numpy(np.float64)
    periods = [p for p in (day, 7 * day) if len(y) >= 2 * p]
    if not periods:
        return None
    started = time.perf_counter()
    mstl = MstlEts(periods).fit(y)
    progress(f"{ds.name}: {mstl.label} fitted on {len(y)} training rows (ETS {mstl.components}), "
             f"{time.perf_counter() - started:.1f}s")
    return mstl


def fit_boost(split: scoring.Split, ds: Dataset, day: int, horizon: int, quick: bool) -> LagBoost:
    """LightGBM on the training split only, once per horizon (its training pairs depend on it)."""
    y, week = split.train[ds.target].to_numpy(np.float64), 7 * day
    started = time.perf_counter()
    boost = LagBoost(day, week if len(y) >= 2 * week else None, horizon,
                     rounds=50 if quick else 300, samples=20_000 if quick else 200_000)
    boost.fit(y, split.train[ds.timestamp_column])
    progress(f"{ds.name} h={horizon}: {boost.label} fitted, {time.perf_counter() - started:.1f}s")
    return boost


def peer_forecasts(mstl: MstlEts | None, boost: LagBoost, frame: scoring.ScoringFrame, split: scoring.Split,
                   ds: Dataset, day: int, horizon: int, windows: int) -> dict[str, np.ndarray]:
    out = {"persistence": frame.persistence(ds.target, horizon)}
    for name, season in (("seasonal naive, day", day), ("seasonal naive, week", 7 * day)):
        if len(split.train) >= season >= horizon:  # where the history allows
            out[f"{name} ({season})"] = frame.seasonal_naive(ds.target, horizon, season)
    series = np.concatenate([split.train[ds.target], split.test[ds.target]]).astype(np.float64)
    times = pd.concat([split.train[ds.timestamp_column], split.test[ds.timestamp_column]], ignore_index=True)
    start = len(split.train) + frame.first_scored_test_row  # the first target row of the series
    if mstl:
        out[mstl.label] = mstl.forecast(series, start, windows, horizon)
    out[boost.label] = boost.forecast(series, times, start, windows, horizon)
    return out


def target_windows(frame: scoring.ScoringFrame, target: str, horizon: int) -> np.ndarray:
    """[windows, horizon]: the target rows every row of the case is scored on."""
    y = frame.frame[target].to_numpy(np.float64)[frame.origin:]
    return np.lib.stride_tricks.sliding_window_view(y, horizon).copy()


def family_row(model_type: str, families: dict, failed: dict[str, str], frame, truth) -> Row:
    if model_type not in families:
        why = failed.get(model_type, "no finished run")
        note = "n/a (horizon over its limit)" if "horizon" in why.lower() else f"n/a (failed: {why[:80]})"
        return Row(model_type, "family", note=note, model_type=model_type)
    pred, y = families[model_type].model.forecast(frame.frame, frame.origin)
    if not np.allclose(y, truth, rtol=1e-6):  # float32 truths of the same rows
        raise RuntimeError(f"{model_type} was scored on other target rows than the peers")
    return Row(model_type, "family", forecast=np.asarray(pred, np.float64), model_type=model_type)


def paper_windows(case: Case, ds: Dataset, families: dict, first_scored_test_row: int) -> dict | None:
    """LTE, h = 1: NRMSE on the paper's targets, the test file's rows from 10 on, beside the
    paper's figures. A model with at most 10 input rows reads the test file alone there (the
    paper's windows); one with a longer input reads the rest from the training tail, as the
    peers but persistence do: those are named in `inputs_before_the_test_file`."""
    if ds.name not in PAPER or case.horizon != 1:
        return None
    skip = PAPER_FIRST_TARGET_ROW - first_scored_test_row
    truth = case.truth[skip:, 0]
    nrmse, beyond = {}, []
    for row in (r for r in case.rows if r.forecast is not None):
        name = "promoted" if row.kind == "promoted" else row.name
        nrmse[name] = float(np.sqrt(np.mean((row.forecast[skip:, 0] - truth) ** 2)) / np.mean(truth))
        input_len = families[row.model_type].signature["input_seq_len"] if row.model_type else 0
        if input_len > PAPER_FIRST_TARGET_ROW or (row.kind == "peer" and name != "persistence"):
            beyond.append(name)
    return {"first_target_row": PAPER_FIRST_TARGET_ROW, "windows": len(truth), "nrmse": nrmse,
            "inputs_before_the_test_file": beyond, "published": PAPER[ds.name]}


def run_case(ds: Dataset, folder: Path, horizon: int, day: int, workdir: Path, quick: bool, fitted: dict) -> Case:
    """One dataset and horizon: the pipeline, then its families and the peers on eval's scoring frame."""
    progress(f"{ds.name} h={horizon}: pipeline (preprocess → {', '.join(forecasters.names())} → eval), "
             f"HORIZON={horizon}")
    run = run_pipeline(ds.name, folder, workdir, {**ds.knobs, "HORIZON": str(horizon), **(QUICK_KNOBS if quick else {})})
    progress(f"{ds.name} h={horizon}: promoted {run.pointer['model_type']} (run {run.pointer['run_id'][:8]}); "
             f"pipeline {run.seconds:.1f}s; scoring")
    split = load_split(run)
    families = load_families(run, workdir / "scoring")
    frame = scoring.scoring_frame(split, [f.signature for f in families.values()])
    case = new_case(ds, horizon, day, run, split, frame)
    add_families(case, run, families, frame)
    if "mstl" not in fitted:
        fitted["mstl"] = fit_mstl(split, ds, day)
    boost = fit_boost(split, ds, day, horizon, quick)
    started = time.perf_counter()
    for name, forecast in peer_forecasts(fitted["mstl"], boost, frame, split, ds, day, horizon, case.windows).items():
        case.add(Row(name, "peer", forecast))
    case.facts["peer_forecast_seconds"] = round(time.perf_counter() - started, 1)
    case.rank_against_peers()
    case.paper = paper_windows(case, ds, families, frame.first_scored_test_row)
    return case


def new_case(ds: Dataset, horizon: int, day: int, run: PipelineRun, split: scoring.Split,
             frame: scoring.ScoringFrame) -> Case:
    truth = target_windows(frame, ds.target, horizon)
    last_step_times = frame.frame[ds.timestamp_column].iloc[frame.origin + horizon - 1:].reset_index(drop=True)
    facts = {"lookback_rows": frame.lookback, "first_scored_test_row": frame.first_scored_test_row,
             "test_rows": len(split.test), "train_rows": len(split.train), "windows": len(truth),
             "zero_targets": int((truth == 0).sum()), "day_steps": day, "pipeline_seconds": round(run.seconds, 1),
             "stage_seconds": run.stage_seconds, "promoted_run_id": run.pointer["run_id"],
             "failed_families": run.failed}
    return Case(ds.name, horizon, horizon_label(horizon, day), ds.target, truth, last_step_times,
                TargetScale.fit(split.train[ds.target]), facts)


def add_families(case: Case, run: PipelineRun, families: dict, frame: scoring.ScoringFrame) -> None:
    """The promoted model first (with the pointer's intervals, if any), then every family's run."""
    types = [*forecasters.names(), *(t for t in families if t not in forecasters.names())]  # + eval's ensemble
    rows = [family_row(model_type, families, run.failed, frame, case.truth) for model_type in types]
    promoted = next(r for r in rows if r.model_type == run.pointer["model_type"])
    intervals = run.pointer.get("intervals")
    scales = frame.window_scales(case.target, case.windows, intervals) if intervals else None
    case.add(Row(f"promoted ({promoted.model_type})", "promoted", promoted.forecast, model_type=promoted.model_type),
             intervals=intervals, scales=scales)
    for row in rows:
        case.add(row)


def run_dataset(ds: Dataset, horizons: list[str], quick: bool, workroot: Path) -> list[Case]:
    day = ds.day_steps()
    steps = [resolve_horizon(token, day) for token in horizons]
    folder = data_folder(ds, quick, workroot / ds.name)
    fitted: dict = {}  # MSTL + ETS: fitted once per dataset, on the first run's training split
    cases = []
    for horizon in steps:
        case = run_case(ds, folder, horizon, day, workroot / ds.name / f"h{horizon}", quick, fitted)
        print_case(case)
        cases.append(case)
    return cases


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    CLOCK["started"] = time.perf_counter()
    args = parse_args(argv)
    try:
        datasets = resolve_datasets(args.datasets)
        for token in args.horizons:
            resolve_horizon(token, 1)
        check_settings(args.quick)
        with tempfile.TemporaryDirectory(prefix="flts-accuracy-") as tmp:
            workroot = args.workdir or Path(tmp)
            cases = [case for ds in datasets for case in run_dataset(ds, args.horizons, args.quick, workroot)]
    except (BenchConfigError, ConfigError) as exc:
        print(f"accuracy: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    checks = check_targets(cases)
    print_targets(checks)
    write_outputs(args.out, cases, checks, args.quick)
    return 0 if all(ok for ok, _ in checks) else 1


def write_outputs(out: Path, cases: list[Case], checks: list[tuple[bool, str]], quick: bool) -> None:
    pngs = {}
    for dataset in dict.fromkeys(c.dataset for c in cases):
        mine = [c for c in cases if c.dataset == dataset]
        pngs[dataset] = out.parent / f"{out.stem}-{dataset}.png"
        plot_dataset(mine, pngs[dataset], mine[0].facts["day_steps"])
    report = {"created": datetime.now(UTC).isoformat(), "machine": platform.platform(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "quick": quick, "notes": NOTES,
              "seconds": round(elapsed(), 1), "results": [case_json(c) for c in cases],
              "targets": [{"passed": ok, "check": text} for ok, text in checks],
              "png": {k: str(v) for k, v in pngs.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"\nwrote {out} and {', '.join(str(p) for p in pngs.values())} "
          f"({elapsed():.0f}s in all)")


if __name__ == "__main__":
    from flts.dev.demo import logging_env
    from flts.logs import configure

    configure(logging_env(os.environ))  # the functions' own lines: short text, warnings and errors only
    sys.exit(main())
