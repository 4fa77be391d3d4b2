"""Small statistics shared by the chapters' summaries and figures: Student-t intervals over seeds and
sliding task-window means.

With 3–5 seeds the t quantile matters (4.30 for 3 seeds): a normal 1.96 band would be less than half as wide.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["t_quantile", "t_interval", "sliding_means"]


def t_quantile(n: int, level: float = 0.95) -> float:
    """The two-sided Student-t multiplier of the standard error for a ``level`` interval over ``n`` values
    (``n - 1`` degrees of freedom): 12.71 for 2 seeds, 4.30 for 3, 2.26 for 10, 1.96 in the limit."""
    # scipy only for the chapters' summaries and figures: keep it off lopbook's import path
    from scipy import stats

    if n < 2:
        raise ValueError(f"an interval needs at least 2 values (one per seed), got {n}")
    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def t_interval(values: Iterable[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed, or per-seed paired differences) and its two-sided Student-t interval
    ``(mean, low, high)``. One value has no interval: ``(value, nan, nan)``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("a mean and its interval need at least one value (one per seed)")
    mean = float(v.mean())
    if v.size == 1:
        return mean, float("nan"), float("nan")
    half = t_quantile(v.size, level) * float(v.std(ddof=1)) / np.sqrt(v.size)
    return mean, mean - half, mean + half


def sliding_means(x: np.ndarray, window: int) -> np.ndarray:
    """Means over every run of ``window`` consecutive entries along the last axis: shape ``(..., T - window + 1)``."""
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= window <= x.shape[-1]:
        raise ValueError(f"window must be in [1, {x.shape[-1]}] tasks, got {window}")
    c = np.cumsum(np.concatenate([np.zeros((*x.shape[:-1], 1)), x], -1), -1)
    return (c[..., window:] - c[..., :-window]) / window
