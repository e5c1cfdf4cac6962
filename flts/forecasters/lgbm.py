"""LGBM: gradient-boosted trees on lags of the target, one LightGBM booster per horizon step
(the direct strategy), served as one ONNX graph that computes its own features from the window.

The graph honours flts.forecasters.onnx's contract (raw feature windows [batch, L, n_features]
in, the next target values in original units out), so infer serves it with the GRU/LSTM loader
and never imports lightgbm. Inside it (opset 15, the highest onnxmltools' LightGBM converter
writes), for a window whose last row is one step before the first forecast:

    level      = mean of the target's last LGBM_LEVEL_ROWS values
    step h     = [target lags 1..K, its seasonal lags (period, ±1) before step h's target row,
                  the means of the last period-long blocks] - level,
                 level, the other columns at the last row (the time features carry the calendar)
                 → booster h (converted by onnxmltools) → + level → forecast[:, h]

L, the window, is the largest lag. The trees forecast the change from the level, not the level:
trees cannot go beyond the values they were fitted on, and the LTE series jump between
levels (ElBorn test NRMSE 0.450 vs 0.529 on the level; bike 0.192 either way).

The trees learn from the features the graph itself computes (ONNX Runtime over chunks of
training windows), so there is one definition of the features and what is served is what
was fitted; the export is checked against lightgbm's own predict on the test windows.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
from onnx import TensorProto, checker, compose, helper, numpy_helper
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from flts.forecasters import onnx as onnx_format
from flts.forecasters.base import Fitted
from flts.forecasters.onnx import INPUT_NAME, OUTPUT_NAME
from flts.logs import log
from flts.metrics import TargetScale
from flts.settings import ConfigError
from flts.train.artifacts import fit_scaler
from flts.train.data import TrainData, held_out_rows, validation_rows
from flts.train.errors import TrainError, TrainingError
from flts.train.settings import TrainSettings
from flts.windows import make_windows, window_count

MAX_HORIZON = 48  # one booster per step: fit time and graph size grow with the horizon
OPSET = 15  # onnxmltools converts LightGBM up to opset 15
CHUNK_VALUES = 8_000_000  # window values per ONNX Runtime call when computing features (32 MB of float32)


class HorizonTooLong(ConfigError, TrainError):
    """HORIZON is beyond what the family supports (a configuration error, announced as FAILED)."""


# ---------------------------------------------------------------- the lags

@dataclass(frozen=True)
class LagPlan:
    """Which values of the window the trees read. A lag counts rows back from the forecast
    origin: lag k is the window's row L - k (lag 1 is its last row)."""

    input_len: int  # L, the window: the largest lag
    target_index: int
    other_columns: tuple[int, ...]  # read at the last row
    level_rows: int
    recent: tuple[int, ...]  # lags 1..K
    periods: tuple[int, ...]  # the seasons used, in rows
    seasonal: tuple[tuple[int, ...], ...]  # per horizon step: lags one period (±1) before that step's target row

    def n_inputs(self, step: int) -> int:
        """Features of the booster of `step` (0-based)."""
        return len(self.recent) + len(self.seasonal[step]) + len(self.periods) + 1 + len(self.other_columns)


def plan_lags(settings: TrainSettings, split: TrainData) -> LagPlan:
    """The lags of this training split: its grid step and its span decide the seasons."""
    step = split.frequency_seconds()
    times = split.train.times
    span = (times.iloc[-1] - times.iloc[0]).total_seconds() + step if len(times) else 0.0
    others = tuple(j for j in range(len(split.feature_columns)) if j != split.target_index)
    return lag_plan(step, span, split.target_index, others, settings)


def lag_plan(step_seconds: float, span_seconds: float, target_index: int, other_columns: tuple[int, ...],
             settings: TrainSettings) -> LagPlan:
    """A season (LGBM_SEASONS, hours) is used when the training data spans two of its periods,
    a period is at least two rows, and its lags fit in LGBM_MAX_WINDOW rows."""
    horizon, recent = settings.output_seq_len, tuple(range(1, settings.lgbm_short_lags + 1))
    periods = []
    for hours in settings.lgbm_seasons:
        rows = round(hours * 3600 / step_seconds) if step_seconds > 0 else 0
        if rows < 2 or span_seconds < 2 * hours * 3600 or rows in periods:
            continue
        if max(max(_seasonal_lags(rows, h, recent), default=0) for h in range(horizon)) > settings.lgbm_max_window:
            log("lgbm_season_left_out", level="warning", period_rows=rows, max_window=settings.lgbm_max_window)
            continue
        periods.append(rows)
    seasonal = tuple(tuple(lag for s in periods for lag in _seasonal_lags(s, h, recent)) for h in range(horizon))
    input_len = max(len(recent), settings.lgbm_level_rows, *periods, *(lag for lags in seasonal for lag in lags))
    return LagPlan(input_len, target_index, other_columns, settings.lgbm_level_rows, recent, tuple(periods), seasonal)


def _seasonal_lags(period: int, step: int, recent: tuple[int, ...]) -> tuple[int, ...]:
    """The lags of the rows one period (±1) before the target row of `step` (0-based), counted
    from the origin; whole periods further back where one period is not yet observed."""
    cycles = 1
    while cycles * period - 1 <= step:  # the target row is `step` rows after the origin
        cycles += 1
    lags = (cycles * period + d - step for d in (-1, 0, 1))
    return tuple(lag for lag in lags if lag not in recent)


def check_horizon(horizon: int) -> None:
    if horizon > MAX_HORIZON:
        raise HorizonTooLong(f"HORIZON must be at most {MAX_HORIZON} for LGBM (one booster per step), got {horizon}: "
                             f"a horizon longer than the model supports")


# ---------------------------------------------------------------- the graph

class _Graph:
    """Nodes and int64 constants being put together (a constant name used twice holds one value)."""

    def __init__(self):
        self.nodes, self.constants = [], {}

    def const(self, name: str, values) -> str:
        self.constants.setdefault(name, numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def add(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def rows(self, name: str, rows: list[int]) -> str:
        """The target at these window rows, [batch, len(rows)]."""
        return self.add("Gather", ["target", self.const(f"{name}_rows", rows)], name, axis=1)

    def mean_of_last(self, name: str, rows: int, length: int) -> str:
        """The mean of the target's last `rows` values, [batch, 1]."""
        ends = [self.const(f"{name}_start", [length - rows]), self.const("end", [length]), self.const("time_axis", [1])]
        return self.add("ReduceMean", [self.add("Slice", ["target", *ends], f"{name}_rows")], name, axes=[1], keepdims=1)


def preprocessing(plan: LagPlan) -> tuple[list, list, list[str]]:
    """The nodes and constants that turn the window into the level and each step's features;
    returns them with the features' tensor names (step order)."""
    g, length = _Graph(), plan.input_len
    g.add("Gather", [INPUT_NAME, g.const("target_column", plan.target_index)], "target", axis=2)  # [batch, L]
    level = g.mean_of_last("level", plan.level_rows, length)
    recent = g.rows("recent", [length - k for k in plan.recent])
    blocks = [g.mean_of_last(f"block{rows}", rows, length) for rows in plan.periods]
    tail = [level]
    if plan.other_columns:
        last = g.add("Gather", [INPUT_NAME, g.const("last_row", length - 1)], "last", axis=1)  # [batch, n_features]
        tail.append(g.add("Gather", [last, g.const("other_columns", plan.other_columns)], "others", axis=1))
    names = []
    for step, lags in enumerate(plan.seasonal):
        seasonal = [g.rows(f"step{step}_seasonal", [length - k for k in lags])] if lags else []
        relative = g.add("Sub", [g.add("Concat", [recent, *seasonal, *blocks], f"step{step}_lags", axis=1), level],
                         f"step{step}_relative")
        names.append(g.add("Concat", [relative, *tail], f"step{step}_features", axis=1))
    return g.nodes, list(g.constants.values()), names


def _model(plan: LagPlan, n_features: int, nodes: list, constants: list, outputs: dict[str, int],
           ml_opset: int | None = None):
    """The graph with the window as input and `outputs` (name: width) [batch, width] as outputs."""
    window = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", plan.input_len, n_features])
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width]) for name, width in outputs.items()]
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("ai.onnx.ml", ml_opset)] if ml_opset else [])
    model = helper.make_model(helper.make_graph(nodes, "flts_lgbm", [window], results, constants),
                              opset_imports=opsets, producer_name="flts")
    model.ir_version = 8  # what opset 15 needs; readable by every ONNX Runtime this project supports
    checker.check_model(model)
    return model


def features_model(plan: LagPlan, n_features: int) -> bytes:
    """The preprocessing alone: window → level and every step's features (what the trees learn from)."""
    nodes, constants, names = preprocessing(plan)
    widths = {"level": 1, **{name: plan.n_inputs(step) for step, name in enumerate(names)}}
    return _model(plan, n_features, nodes, constants, widths).SerializeToString()


def served_model(plan: LagPlan, n_features: int, boosters: list) -> bytes:
    """The preprocessing, each step's converted trees (+ level), the steps side by side."""
    nodes, constants, names = preprocessing(plan)
    steps, ml_opset = [], 1
    for step, (booster, features) in enumerate(zip(boosters, names, strict=True)):
        trees = converted_trees(booster, plan.n_inputs(step), f"step{step}_")
        if [i.name for i in trees.graph.input] != [features]:
            raise TrainingError(f"the converted trees of step {step} read {[i.name for i in trees.graph.input]}, "
                                f"not {features}")
        ml_opset = max([ml_opset, *(o.version for o in trees.opset_import if o.domain == "ai.onnx.ml")])
        nodes += list(trees.graph.node)
        constants += list(trees.graph.initializer)
        steps.append(f"step{step}_forecast")
        nodes.append(helper.make_node("Add", [trees.graph.output[0].name, "level"], [steps[-1]]))
    nodes.append(helper.make_node("Concat", steps, [OUTPUT_NAME], axis=1))
    return _model(plan, n_features, nodes, constants, {OUTPUT_NAME: len(steps)}, ml_opset).SerializeToString()


def converted_trees(booster, n_inputs: int, prefix: str):
    """onnxmltools' conversion of one booster, every name prefixed (its input: <prefix>features)."""
    model = convert_lightgbm(booster, initial_types=[("features", FloatTensorType([None, n_inputs]))],
                             target_opset=OPSET)
    return compose.add_prefix(model, prefix)


# ---------------------------------------------------------------- windows

def window_chunks(features: np.ndarray, target: np.ndarray, input_len: int,
                  output_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """flts.windows.make_windows over the rows, a bounded number of windows at a time (a long
    window times many origins would not fit in memory at once)."""
    n = window_count(len(features), input_len, output_len)
    per_chunk = max(1, CHUNK_VALUES // (input_len * features.shape[1]))
    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk) + input_len + output_len - 1
        yield make_windows(features[start:stop], target[start:stop], input_len, output_len)


@dataclass
class Table:
    """The features of many windows as the graph computes them, and their targets."""

    level: np.ndarray  # [windows] float32
    steps: list[np.ndarray]  # per step [windows, n_inputs] float32
    truth: np.ndarray  # [windows, horizon] float32

    def change(self, step: int) -> np.ndarray:
        """What booster `step` learns: the step's target minus the level."""
        return self.truth[:, step].astype(np.float64) - self.level


def feature_table(session, features: np.ndarray, target: np.ndarray, plan: LagPlan, horizon: int) -> Table:
    parts = []
    for x, y in window_chunks(features, target, plan.input_len, horizon):
        level, *steps = session.run(None, {INPUT_NAME: x})
        parts.append((level[:, 0], steps, y))
    return Table(np.concatenate([p[0] for p in parts]),
                 [np.concatenate([p[1][h] for p in parts]) for h in range(horizon)],
                 np.concatenate([p[2] for p in parts]))


# ---------------------------------------------------------------- the family

def fit(settings: TrainSettings, split: TrainData, folder: Path, label: str) -> Fitted:
    """Fit one booster per step with early stopping on the validation tail, export the graph,
    and forecast the test windows with it (checked against lightgbm's own predict)."""
    check_horizon(settings.output_seq_len)
    plan = plan_lags(settings, split)
    started = time.perf_counter()
    preprocess = onnx_format.open_session(features_model(plan, len(split.feature_columns)), "the LGBM feature graph")
    cut = len(split.train.target) - validation_rows(len(split.train.target), plan.input_len, settings.output_seq_len,
                                                    settings.val_fraction)
    boosters, val_mse, validation = fit_boosters(settings, split, plan, preprocess, cut)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    std = TargetScale.fit(split.train.target).std
    model_bytes, served, truth, lookback, diff = export_checked(split, plan, preprocess, boosters,
                                                               settings.parity_tolerance * std)
    rounds = [b.current_iteration() for b in boosters]
    log("train_fit_done", model_type="LGBM", label=label, input_seq_len=plan.input_len, periods=list(plan.periods),
        rounds=rounds, test_lookback_rows=lookback, seconds=round(train_seconds, 2))
    return Fitted(model_bytes, served, truth, fit_scaler(split.train.features[:cut], split.feature_columns),
                  metrics={"train_seconds": train_seconds, "export_seconds": time.perf_counter() - started,
                           "onnx_max_abs_diff": diff, "best_iteration": max(rounds), "trees": sum(rounds),
                           "val_loss": float(np.mean(val_mse)) / std ** 2, "test_lookback_rows": lookback},
                  validation=validation, input_seq_len=plan.input_len)


def fit_boosters(settings: TrainSettings, split: TrainData, plan: LagPlan, preprocess,
                 cut: int) -> tuple[list, list, tuple[np.ndarray, np.ndarray]]:
    """Each step's booster, its validation mse, and the validation (forecasts, truths) of the boosters
    before any refit (they never trained on those windows); the fit part is the training rows before `cut`,
    the validation windows' targets lie after it (their inputs reach back before it)."""
    train, horizon = split.train, settings.output_seq_len
    fit_table = feature_table(preprocess, train.features[:cut], train.target[:cut], plan, horizon)
    back = cut - plan.input_len
    val_table = feature_table(preprocess, train.features[back:], train.target[back:], plan, horizon)
    boosters, val_mse, val_change = zip(*(train_booster(settings, fit_table, val_table, h) for h in range(horizon)),
                                        strict=True)
    val_forecast = val_table.level[:, None] + np.stack(val_change, axis=1)
    return list(boosters), list(val_mse), (val_forecast, val_table.truth)


def export_checked(split: TrainData, plan: LagPlan, preprocess, boosters: list,
                   bound: float) -> tuple[bytes, np.ndarray, np.ndarray, int, float]:
    """The served graph, its forecasts of the test windows and their truths, the lookback rows
    those windows took from the training tail, and max |graph - lightgbm| (<= bound)."""
    horizon = len(boosters)
    model_bytes = served_model(plan, len(split.feature_columns), boosters)
    features, target, lookback = held_out_rows(split, plan.input_len, horizon)
    table = feature_table(preprocess, features, target, plan, horizon)
    served = forecast(onnx_format.open_session(model_bytes, "the exported LGBM graph"), features, target, plan, horizon)
    return model_bytes, served, table.truth, lookback, check_parity(predict(boosters, table), served, bound)


def train_booster(settings: TrainSettings, fit_table: Table, val_table: Table, step: int):
    """One step's booster: as many rounds as early stopping on the validation tail finds, fitted
    again on every training window when LGBM_REFIT (the tail is the most recent data). Returns it
    (thresholds as float32), the best validation mse of the early-stopping fit (original units) and
    that fit's forecasts of the validation windows' change from the level."""
    params = {"objective": "regression", "learning_rate": settings.lgbm_learning_rate,
              "num_leaves": settings.lgbm_num_leaves, "min_data_in_leaf": settings.lgbm_min_data_in_leaf,
              "num_threads": settings.lgbm_threads, "seed": settings.seed, "deterministic": True,
              "force_col_wise": True, "verbosity": -1}
    fit_set = lgb.Dataset(fit_table.steps[step], fit_table.change(step))
    val_set = lgb.Dataset(val_table.steps[step], val_table.change(step), reference=fit_set)
    booster = lgb.train(params, fit_set, settings.lgbm_n_estimators, valid_sets=[val_set],
                        callbacks=[lgb.early_stopping(settings.lgbm_early_stopping_rounds, verbose=False)])
    rounds, val_mse = booster.best_iteration, booster.best_score["valid_0"]["l2"]
    val_change = booster.predict(val_table.steps[step], num_iteration=rounds)
    if rounds >= settings.lgbm_n_estimators:
        log("lgbm_rounds_capped", level="warning", step=step, rounds=rounds)
    if settings.lgbm_refit:
        every = lgb.Dataset(np.concatenate([fit_table.steps[step], val_table.steps[step]]),
                            np.concatenate([fit_table.change(step), val_table.change(step)]))
        booster = lgb.train(params, every, rounds)
    return float32_thresholds(booster.model_to_string(num_iteration=rounds)), val_mse, val_change


_THRESHOLDS = re.compile(r"^threshold=(.*)$", re.MULTILINE)
_TREE_SIZES = re.compile(r"^tree_sizes=.*\n", re.MULTILINE)


def float32_thresholds(model: str) -> lgb.Booster:
    """The booster with each split threshold t rounded down to a float32 t32. The graph feeds the
    trees float32 features, for which x <= t exactly when x <= t32; ONNX stores thresholds as
    float32, and t rounded to the nearest float32 would send x == that float the other way than
    lightgbm does (seen on the bike counts)."""
    def round_down(match: re.Match) -> str:
        exact = np.array(match.group(1).split(), dtype=np.float64)
        single = exact.astype(np.float32)
        single = np.where(single.astype(np.float64) > exact, np.nextafter(single, np.float32(-np.inf)), single)
        return "threshold=" + " ".join(repr(float(t)) for t in single)

    rounded = _THRESHOLDS.sub(round_down, model)
    return lgb.Booster(model_str=_TREE_SIZES.sub("", rounded))  # the byte sizes changed: lightgbm parses without them


def predict(boosters: list, table: Table) -> np.ndarray:
    """lightgbm's own forecasts of the windows: each step's change + the level."""
    return np.stack([b.predict(x) + table.level for b, x in zip(boosters, table.steps, strict=True)], axis=1)


def forecast(session, features: np.ndarray, target: np.ndarray, plan: LagPlan, horizon: int) -> np.ndarray:
    """The served graph's forecasts of every window of the rows."""
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
                           for x, _ in window_chunks(features, target, plan.input_len, horizon)])


def check_parity(reference: np.ndarray, served: np.ndarray, bound: float) -> float:
    """Max |ONNX - lightgbm| over the test windows; TrainingError beyond `bound`."""
    diff = float(np.max(np.abs(served.astype(np.float64) - reference)))
    log("onnx_parity", model_type="LGBM", max_abs_diff=diff, bound=bound, windows=len(served))
    if not diff <= bound:
        raise TrainingError(f"the LGBM graph disagrees with lightgbm: max |diff| {diff:.6g} > bound {bound:.6g} "
                            f"(PARITY_TOLERANCE x target std) over {len(served)} test windows")
    return diff
