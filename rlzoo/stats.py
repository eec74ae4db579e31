"""Summary statistics across runs: mean, IQM and percentile-bootstrap confidence intervals.

Small NumPy functions used by results tables and benchmark reports (Agarwal et
al., 2021, recommend IQM with bootstrap CIs over few seeds). Not here: plotting.
"""

from __future__ import annotations

import numpy as np


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (trimmed at 25% each side)."""
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = len(values)
    if n == 0:
        return float("nan")
    low, high = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(values[low:high].mean()) if high > low else float(values.mean())


def bootstrap_ci(values: np.ndarray, statistic=np.mean, confidence: float = 0.95,
                 num_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic` over runs."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    resamples = rng.choice(values, size=(num_resamples, len(values)), replace=True)
    stats = np.array([statistic(r) for r in resamples])
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)
