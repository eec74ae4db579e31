"""Evaluation report over finished run folders, after Agarwal et al. (2021), "Deep
Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS).

Use it to compare algorithms or sweep configurations once training is done: it
reads each run folder's `summary.json` (final return per seed) into a score
matrix `scores[num_runs, num_tasks]` per label, then reports the mean, median and
interquartile mean (IQM) with stratified-bootstrap 95% confidence intervals, the
probability of improvement between every pair of labels, and performance
profiles, as `report.md`, `aggregates.png` and `performance_profile.png`
(`python -m rlzoo.report RUN_DIR... --out DIR`). Scores are raw final returns, so
aggregating over several tasks is only meaningful if their return scales are
comparable (the paper normalises scores per task first; this module does not).
Not for: learning curves during training (see `rlzoo.logging`), and not a
significance test; the intervals describe uncertainty, they do not decide.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlzoo.stats import (Scores, aggregate_intervals, as_scores, performance_profile, performance_profile_ci,
                         probability_of_improvement, probability_of_improvement_ci)

SUMMARY_FILE, CONFIG_FILE = "summary.json", "config.json"
REPORT_FILE, AGGREGATES_PLOT, PROFILE_PLOT = "report.md", "aggregates.png", "performance_profile.png"
METRIC_NAMES = ("mean", "median", "iqm")


# ---------------------------------------------------------------- loading run folders


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def find_run_folders(path: str | Path) -> list[Path]:
    """`path` itself if it holds summary.json, else its sub-folders that do (one level deep)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such folder")
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder")
    if (path / SUMMARY_FILE).is_file():
        return [path]
    children = sorted(p for p in path.iterdir() if p.is_dir())
    for child in children:
        if (child / CONFIG_FILE).is_file() and not (child / SUMMARY_FILE).is_file():
            warnings.warn(f"{child}: no {SUMMARY_FILE} (unfinished run?), skipped", stacklevel=3)
    found = [p for p in children if (p / SUMMARY_FILE).is_file()]
    if not found:
        raise ValueError(f"{path}: no {SUMMARY_FILE} in it or in its sub-folders")
    return found


def read_run(run_dir: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(env_id, {label: per-seed final returns}) of one run folder; label is the algo, plus
    the configuration label when the run is a sweep."""
    config = _read_json(run_dir / CONFIG_FILE)
    summary = _read_json(run_dir / SUMMARY_FILE)
    algo, env_id = config.get("algo"), (config.get("config") or {}).get("env_id")
    if not isinstance(algo, str) or not isinstance(env_id, str):
        raise ValueError(f"{run_dir / CONFIG_FILE}: missing 'algo' or 'config.env_id'")
    per_seed = summary.get("final_return_per_seed")
    if not isinstance(per_seed, dict) or not per_seed:
        raise ValueError(f"{run_dir / SUMMARY_FILE}: missing 'final_return_per_seed'")
    runs = {}
    for config_label, values in per_seed.items():
        where = f"{run_dir / SUMMARY_FILE}: final_return_per_seed[{config_label!r}]"
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where} must be a non-empty list of numbers")
        if any(v is None or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            raise ValueError(f"{where} has missing or non-finite scores (NaN/None): {values}")
        label = algo if len(per_seed) == 1 else f"{algo} {config_label}"
        runs[label] = np.asarray(values, dtype=np.float64)
    return env_id, runs


def load_run_table(paths: Sequence[str | Path]) -> tuple[dict[str, Scores], list[str]]:
    """Like `load_runs`, and also the task names (env ids) of the columns."""
    if not paths:
        raise ValueError("no run folders given")
    folders = list(dict.fromkeys(p.resolve() for path in paths for p in find_run_folders(path)))
    by_label: dict[str, dict[str, list[np.ndarray]]] = {}
    for folder in folders:
        env_id, runs = read_run(folder)
        for label, values in runs.items():
            by_label.setdefault(label, {}).setdefault(env_id, []).append(values)
    tasks = sorted(set.intersection(*(set(t) for t in by_label.values())))
    if not tasks:
        covered = "; ".join(f"{label}: {', '.join(sorted(t))}" for label, t in by_label.items())
        raise ValueError(f"the labels share no task (env_id), so they cannot be compared: {covered}")
    for label, per_task in by_label.items():
        if dropped := sorted(set(per_task) - set(tasks)):
            warnings.warn(f"{label}: tasks {', '.join(dropped)} dropped (not run by every label)", stacklevel=2)
    return {label: _task_matrix(label, per_task, tasks) for label, per_task in by_label.items()}, tasks


def _task_matrix(label: str, per_task: dict[str, list[np.ndarray]], tasks: list[str]) -> Scores:
    columns = [np.concatenate(per_task[task]) for task in tasks]
    counts = [len(c) for c in columns]
    if len(set(counts)) > 1:
        detail = ", ".join(f"{task}: {n}" for task, n in zip(tasks, counts))
        warnings.warn(f"{label}: run counts differ across tasks ({detail}); keeping the first {min(counts)} "
                      f"of each", stacklevel=3)
    return np.stack([c[:min(counts)] for c in columns], axis=1)


def load_runs(paths: Sequence[str | Path]) -> dict[str, Scores]:
    """Score matrices [runs, tasks] by label from run folders (or folders of run folders).

    Each run folder gives its `final_return_per_seed`, one label per configuration
    ("ppo", or "ppo lr=0.001" for a sweep); run folders of the same label on
    different env ids become the task columns (sorted by env id), and several
    folders of the same label and env id add runs. Tasks not run by every label are
    dropped and unequal run counts are truncated to the smallest, with a warning.
    Raises ValueError naming the path for missing folders or bad scores.
    """
    return load_run_table(paths)[0]


# ---------------------------------------------------------------- report


def _num(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(point: float, low: float, high: float) -> str:
    return f"{_num(point)} [{_num(low)}, {_num(high)}]"


def markdown_report(intervals: Mapping[str, Mapping[str, tuple[float, float, float]]],
                    shapes: Mapping[str, tuple[int, int]], improvement: Mapping[tuple[str, str], tuple[float, ...]],
                    tasks: Sequence[str] | None, confidence: float, num_resamples: int) -> str:
    """The markdown text of report.md."""
    percent = f"{confidence:.0%}"
    metrics = list(next(iter(intervals.values())))
    lines = ["# Evaluation report", "",
             f"Point estimates with {percent} stratified-bootstrap confidence intervals ({num_resamples} resamples), "
             "after Agarwal et al. (2021). Median is across tasks of the per-task mean; IQM pools all runs x tasks."]
    if tasks:
        lines += ["", f"Tasks: {', '.join(tasks)}"]
    lines += ["", "| label | runs x tasks | " + " | ".join(f"{m} [{percent} CI]" for m in metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for label, values in intervals.items():
        runs, num_tasks = shapes[label]
        lines.append(f"| {label} | {runs} x {num_tasks} | " + " | ".join(_cell(*values[m]) for m in metrics) + " |")
    if improvement:
        lines += ["", "## Probability of improvement", "",
                  "P(X > Y): chance that a run of X beats a run of Y on the same task, averaged over tasks.", "",
                  f"| X | Y | P(X > Y) [{percent} CI] |", "|---|---|---|"]
        lines += [f"| {x} | {y} | {p:.2f} [{low:.2f}, {high:.2f}] |" for (x, y), (p, low, high) in improvement.items()]
    return "\n".join(lines) + "\n"


def profile_thresholds(scores_by_label: Mapping[str, Scores], num: int = 101) -> np.ndarray:
    """`num` evenly spaced thresholds spanning every score, a little below the lowest."""
    values = np.concatenate([as_scores(s).ravel() for s in scores_by_label.values()])
    low, high = float(values.min()), float(values.max())
    margin = 0.02 * (high - low) or 1.0
    return np.linspace(low - margin, high, num)


def plot_aggregates(intervals: Mapping[str, Mapping[str, tuple[float, float, float]]], path: Path,
                    confidence: float) -> None:
    """Interval plot: one panel per metric, a point and a CI bar per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(intervals)
    metrics = list(intervals[labels[0]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.6 * len(labels) + 1.4),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for row, label in enumerate(labels):
            point, low, high = intervals[label][metric]
            ax.errorbar(point, row, xerr=[[point - low], [high - point]], fmt="o", color=f"C{row % 10}",
                        capsize=4, linewidth=2)
        ax.set_title(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].set_ylim(-0.6, len(labels) - 0.4)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Aggregate final return ({confidence:.0%} stratified bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_profiles(profiles: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], thresholds: np.ndarray,
                  path: Path, confidence: float) -> None:
    """Performance profiles: fraction of runs with score > tau against tau, one line and band per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (point, low, high)) in enumerate(profiles.items()):
        ax.plot(thresholds, point, color=f"C{i % 10}", label=label)
        ax.fill_between(thresholds, low, high, color=f"C{i % 10}", alpha=0.2, linewidth=0)
    ax.set_xlabel(r"final return threshold $\tau$")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Performance profile ({confidence:.0%} CI band)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(scores_by_label: Mapping[str, Scores], out_dir: str | Path, tasks: Sequence[str] | None = None,
                 num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                 gamma: float | None = None) -> str:
    """Writes report.md, aggregates.png and performance_profile.png to `out_dir`; returns the markdown."""
    if not scores_by_label:
        raise ValueError("no scores to report")
    scores = {label: as_scores(s, f"scores[{label!r}]") for label, s in scores_by_label.items()}
    intervals = {label: aggregate_intervals(s, num_resamples, confidence, seed, gamma) for label, s in scores.items()}
    improvement = {}
    for x, y in itertools.combinations(scores, 2):
        if scores[x].shape[1] == scores[y].shape[1]:
            improvement[x, y] = (probability_of_improvement(scores[x], scores[y]),
                                 *probability_of_improvement_ci(scores[x], scores[y], num_resamples, confidence, seed))
    thresholds = profile_thresholds(scores)
    profiles = {label: (performance_profile(s, thresholds),
                        *performance_profile_ci(s, thresholds, num_resamples, confidence, seed))
                for label, s in scores.items()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_report(intervals, {label: s.shape for label, s in scores.items()}, improvement, tasks,
                           confidence, num_resamples)
    (out / REPORT_FILE).write_text(text)
    plot_aggregates(intervals, out / AGGREGATES_PLOT, confidence)
    plot_profiles(profiles, thresholds, out / PROFILE_PLOT, confidence)
    return text


def main(args: Sequence[str] | None = None) -> None:
    """`python -m rlzoo.report RUN_DIR... [--out DIR]`: prints the table and writes the report folder."""
    parser = argparse.ArgumentParser(prog="python -m rlzoo.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders, or folders holding run folders (one level deep)")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--num-resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval confidence (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--gamma", type=float, default=None, help="also report the optimality gap to this score")
    options = parser.parse_args(args)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores, tasks = load_run_table(options.paths)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        text = write_report(scores, options.out, tasks, options.num_resamples, options.confidence, options.seed,
                            options.gamma)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text, end="")
    print(f"report written to {Path(options.out) / REPORT_FILE}")


if __name__ == "__main__":
    main()
