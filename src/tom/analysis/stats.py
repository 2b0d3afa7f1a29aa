"""Statistics over seeds: percentile-bootstrap CIs of the mean, the interquartile mean (IQM).

Seeds are few (3–5), so every interval is a percentile bootstrap over seeds, and the IQM
(the mean of the middle 50 %, robust to one outlying seed, Agarwal et al. 2021) is reported
next to the mean. With fewer than two observations there is no interval: the bounds are NaN.
All functions drop NaNs first and are deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

N_BOOT = 5000
CONFIDENCE = 0.95


def _clean(x) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[~np.isnan(x)]


def iqm(x, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: sort, drop ⌊n/4⌋ values at each end, average the rest.

    The same convention as ``scipy.stats.trim_mean(x, 0.25)`` (and rliable). NaN for no data.
    """
    x = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        return np.nan
    cut = int(0.25 * n)
    middle = np.take(x, np.arange(cut, n - cut), axis=axis)
    out = middle.mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_distribution(x, statistic: Callable = _mean, n_boot: int = N_BOOT,
                           seed: int = 0) -> np.ndarray:
    """``n_boot`` values of ``statistic`` on resamples (with replacement) of the data.

    ``statistic(samples, axis=-1)`` must reduce the last axis; resampling is one vectorised
    draw of shape [n_boot, n].
    """
    x = _clean(x)
    if x.size == 0:
        return np.full(n_boot, np.nan)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    return np.asarray(statistic(x[idx], axis=-1), dtype=float)


def bootstrap_ci(x, statistic: Callable = _mean, confidence: float = CONFIDENCE,
                 n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic``; (NaN, NaN) with fewer than 2 values."""
    x = _clean(x)
    if x.size < 2:
        return (np.nan, np.nan)
    dist = bootstrap_distribution(x, statistic, n_boot, seed)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(dist, [alpha / 2, 1.0 - alpha / 2])
    return (float(lo), float(hi))


def mean_ci(x, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0
            ) -> tuple[float, float, float]:
    """(mean, lower, upper): the mean and its percentile-bootstrap interval."""
    x = _clean(x)
    mean = float(x.mean()) if x.size else np.nan
    return (mean, *bootstrap_ci(x, _mean, confidence, n_boot, seed))


def iqm_ci(x, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0
           ) -> tuple[float, float, float]:
    """(IQM, lower, upper): the interquartile mean and its percentile-bootstrap interval."""
    x = _clean(x)
    return (iqm(x) if x.size else np.nan, *bootstrap_ci(x, iqm, confidence, n_boot, seed))


def summarise(df: pd.DataFrame, by: list[str], value: str, confidence: float = CONFIDENCE,
              n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One row per group of ``by``: n, mean, std (ddof 1), mean CI, IQM and IQM CI of ``value``.

    Typical use: ``summarise(returns, ["env", "objective", "env_steps"], "return_mean")``
    gives the curve over seeds of every (task, method).
    """
    rows = []
    for key, group in df.groupby(by, sort=True):
        x = _clean(group[value])
        mean, lo, hi = mean_ci(x, confidence, n_boot, seed)
        q, q_lo, q_hi = iqm_ci(x, confidence, n_boot, seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n": int(x.size), "mean": mean,
                     "std": float(x.std(ddof=1)) if x.size > 1 else np.nan,
                     "ci_lo": lo, "ci_hi": hi, "iqm": q, "iqm_lo": q_lo, "iqm_hi": q_hi})
    columns = [*by, "n", "mean", "std", "ci_lo", "ci_hi", "iqm", "iqm_lo", "iqm_hi"]
    return pd.DataFrame(rows, columns=columns)
