"""Confidence intervals shared by every part (scoring, training, prefs, evaluation, report): percentile bootstrap,
paired bootstrap, Wilson."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

DEFAULT_RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (e.g. per-item 0/1 correctness)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n: int, *, confidence: float = 0.95,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of any statistic over n items; `statistic(indices)` computes it on a resample."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=float)
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Difference mean(b) - mean(a) over the same items, with a paired bootstrap CI and two-sided p-value."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap needs the same items: {xa.size} vs {xb.size}")
    if xa.size == 0:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "n": 0}
    d = xb - xa
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    diffs = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    # p-value: how often the resampled difference falls on the other side of zero (two-sided)
    p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"diff": float(d.mean()), "ci_low": float(np.quantile(diffs, alpha)),
            "ci_high": float(np.quantile(diffs, 1 - alpha)), "p_value": float(min(1.0, p)), "n": int(d.size)}


def wilson_ci(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good for small n and rates near 0 or 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)  # two-sided normal quantile: 1.95996... for 0.95
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
