"""Sliding windows: the one definition of "input = last N rows, output = next M target values".

Train, eval, the accuracy benchmark and the serving path all cut windows here, so a
model is always scored on exactly the windows it would be served.
"""
from __future__ import annotations

import numpy as np


class WindowError(ValueError):
    pass


def window_count(rows: int, input_len: int, output_len: int) -> int:
    return rows - input_len - output_len + 1


def make_windows(features: np.ndarray, target: np.ndarray, input_len: int, output_len: int) -> tuple[np.ndarray, np.ndarray]:
    """X[i] = features[i : i+input_len], Y[i] = target[i+input_len : i+input_len+output_len].

    features: [rows, n_features]; target: [rows]. Returns X [N, input_len, n_features] and
    Y [N, output_len] as float32 views-turned-copies (contiguous for torch and ONNX Runtime).
    """
    features, target = np.asarray(features), np.asarray(target)
    if features.ndim != 2 or target.ndim != 1:
        raise WindowError(f"features must be [rows, n_features] and target [rows], got shapes "
                          f"{features.shape} and {target.shape}")
    if len(features) != len(target):
        raise WindowError(f"features have {len(features)} rows but the target has {len(target)}")
    if input_len < 1 or output_len < 1:
        raise WindowError(f"window lengths must be >= 1 (input {input_len}, output {output_len})")
    n = window_count(len(features), input_len, output_len)
    if n < 1:
        raise WindowError(
            f"{len(features)} rows are too few for one window of {input_len} input + {output_len} output rows")
    view = np.lib.stride_tricks.sliding_window_view(features, input_len, axis=0)[:n]  # [N, F, input_len]
    x = np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)
    y_view = np.lib.stride_tricks.sliding_window_view(target[input_len:], output_len)[:n]
    return x, np.ascontiguousarray(y_view, dtype=np.float32)


def lookback_rows(train_times, test_times, needed: int) -> int:
    """How many training rows go before the test split when it is scored: `needed` (the longest
    input window) when the test split directly follows the training split on its grid, so that
    every test row can be a forecast target; 0 when the test file stands alone (the paper's
    convention: its first `needed` rows are inputs only).

    train_times / test_times: datetime64 sequences in time order.
    """
    import pandas as pd  # numpy-only callers (infer) never get here

    train_times, test_times = pd.Series(pd.to_datetime(train_times)), pd.Series(pd.to_datetime(test_times))
    if len(train_times) < max(needed, 2) or test_times.empty:
        return 0
    step = train_times.diff().dropna().median()
    return needed if test_times.iloc[0] - train_times.iloc[-1] == step else 0
