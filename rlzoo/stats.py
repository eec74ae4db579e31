"""Summary statistics across runs: the one home of rlzoo's statistics.

Small NumPy functions used by learning-curve tables, results tables, benchmark
reports and the evaluation report, after Agarwal et al. (2021), "Deep
Reinforcement Learning at the Edge of the Statistical Precipice": mean, median,
interquartile mean (IQM) and optimality gap of a score matrix [runs, tasks],
percentile and stratified-bootstrap confidence intervals, performance profiles
and the probability of improvement. Not here: reading run folders, tables and
plots (`rlzoo.report`, `rlzoo.logging`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Scores = np.ndarray  # float64 [num_runs, num_tasks]
Statistic = Callable[..., Any]


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


# ---------------------------------------------------------------- score matrices


def as_scores(scores: Any, name: str = "scores") -> Scores:
    """A float64 [runs, tasks] matrix; a 1-D array is one task. Raises ValueError if empty or not finite."""
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"{name} must be a non-empty [runs, tasks] matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


# ---------------------------------------------------------------- aggregate metrics


def aggregate_mean(scores: Scores) -> float:
    """Mean over tasks of the per-task mean score (Agarwal et al., 2021, Sec. 4.3)."""
    return float(np.mean(np.mean(as_scores(scores), axis=0)))


def aggregate_median(scores: Scores) -> float:
    """Median over tasks of the per-task mean score (Agarwal et al., 2021, Sec. 4.3).

    With a single task this equals the mean: the paper's median is across tasks, not runs.
    """
    return float(np.median(np.mean(as_scores(scores), axis=0)))


def aggregate_iqm(scores: Scores) -> float:
    """Interquartile mean of all runs x tasks pooled: the mean of the middle 50% after
    discarding the lowest and highest 25% (Agarwal et al., 2021, Sec. 4.3; the same
    trimming as `scipy.stats.trim_mean(x, 0.25)`)."""
    return iqm(as_scores(scores))


def optimality_gap(scores: Scores, gamma: float = 1.0) -> float:
    """How far scores fall short of the target `gamma`: gamma - mean(min(score, gamma)) over
    all runs x tasks (Agarwal et al., 2021, Sec. 4.3; lower is better)."""
    return float(gamma - np.mean(np.minimum(as_scores(scores), gamma)))


def metric_functions(gamma: float | None = None) -> dict[str, Callable[[Scores], float]]:
    """The aggregate metrics by name; `optimality_gap` only when a target `gamma` is given."""
    metrics: dict[str, Callable[[Scores], float]] = {
        "mean": aggregate_mean, "median": aggregate_median, "iqm": aggregate_iqm}
    if gamma is not None:
        metrics["optimality_gap"] = lambda s: optimality_gap(s, gamma)
    return metrics


def aggregate_metrics(scores: Scores, gamma: float | None = None) -> dict[str, float]:
    """Point estimates of mean, median, IQM (and the optimality gap to `gamma` if given)."""
    scores = as_scores(scores)
    return {name: fn(scores) for name, fn in metric_functions(gamma).items()}


# ---------------------------------------------------------------- stratified bootstrap


def stratified_resample(scores: Scores, rng: np.random.Generator) -> Scores:
    """One stratified bootstrap resample: within each task (column), runs are drawn with
    replacement independently of the other tasks, so values never move between tasks
    (Agarwal et al., 2021, Sec. 4.1, "stratified bootstrap")."""
    num_runs, num_tasks = scores.shape
    rows = rng.integers(0, num_runs, size=(num_runs, num_tasks))
    return np.take_along_axis(scores, rows, axis=0)


def _interval(samples: np.ndarray, confidence: float) -> tuple[Any, Any]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


def stratified_bootstrap_ci(scores: Scores | tuple[Scores, ...], statistic: Statistic, num_resamples: int = 2000,
                            confidence: float = 0.95, seed: int = 0) -> tuple[Any, Any]:
    """Percentile confidence interval of `statistic` under the stratified bootstrap
    (Agarwal et al., 2021, Sec. 4.1; the percentile interval of Efron & Tibshirani, 1993).

    `scores` is one [runs, tasks] matrix, or a tuple of matrices that are resampled
    independently of each other and passed to `statistic` as separate arguments
    (as for the probability of improvement). `statistic` returns a float or a 1-D
    array; the interval is (low, high) of the same kind.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    matrices = [as_scores(s) for s in scores] if isinstance(scores, tuple) else [as_scores(scores)]
    rng = np.random.default_rng(seed)
    samples = np.asarray([statistic(*(stratified_resample(m, rng) for m in matrices))
                          for _ in range(num_resamples)], dtype=np.float64)
    return _interval(samples, confidence)


def aggregate_intervals(scores: Scores, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                        gamma: float | None = None) -> dict[str, tuple[float, float, float]]:
    """(point, low, high) of each aggregate metric, all from the same bootstrap resamples."""
    scores = as_scores(scores)
    functions = metric_functions(gamma)
    low, high = stratified_bootstrap_ci(scores, lambda s: [fn(s) for fn in functions.values()],
                                        num_resamples, confidence, seed)
    return {name: (fn(scores), float(lo), float(hi))
            for (name, fn), lo, hi in zip(functions.items(), low, high)}


# ---------------------------------------------------------------- profiles and improvement


def performance_profile(scores: Scores, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Score distribution: for each threshold tau, the fraction of runs with score > tau,
    averaged over tasks (Agarwal et al., 2021, Sec. 4.2). Non-increasing in tau."""
    scores = as_scores(scores)
    taus = np.asarray(thresholds, dtype=np.float64).ravel()
    above = scores[:, :, None] > taus[None, None, :]  # [runs, tasks, thresholds]
    return above.mean(axis=0).mean(axis=0)


def performance_profile_ci(scores: Scores, thresholds: Sequence[float] | np.ndarray, num_resamples: int = 2000,
                           confidence: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise stratified-bootstrap band (low, high) of `performance_profile`."""
    taus = np.asarray(thresholds, dtype=np.float64).ravel()
    return stratified_bootstrap_ci(scores, lambda s: performance_profile(s, taus), num_resamples, confidence, seed)


def probability_of_improvement(scores_x: Scores, scores_y: Scores) -> float:
    """P(X > Y): for each task the Mann-Whitney U statistic over all pairs of runs,
    1 if x > y, 1/2 if tied, 0 otherwise, divided by the number of pairs; then averaged
    over tasks (Agarwal et al., 2021, Sec. 4.3). Run counts may differ; tasks must match."""
    x, y = as_scores(scores_x, "scores_x"), as_scores(scores_y, "scores_y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"probability of improvement needs the same tasks: {x.shape[1]} vs {y.shape[1]} columns")
    pairs = x[:, None, :] - y[None, :, :]  # [runs_x, runs_y, tasks]
    per_task = (pairs > 0).mean(axis=(0, 1)) + 0.5 * (pairs == 0).mean(axis=(0, 1))
    return float(per_task.mean())


def probability_of_improvement_ci(scores_x: Scores, scores_y: Scores, num_resamples: int = 2000,
                                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of P(X > Y), resampling X and Y independently, each stratified by task."""
    return stratified_bootstrap_ci((scores_x, scores_y), probability_of_improvement, num_resamples, confidence, seed)
