"""Host-side logging of what the jitted program returns after each chunk of updates.

`MetricsCSV` appends one row per (update, member) to `metrics.csv`; `ProgressBar`
shows env steps, steps/s and episode return while training runs; `plot_learning_curves`
writes the learning-curve PNG; `results_table` prints the final table with a
95% bootstrap CI per configuration. Metrics arrive batched per chunk, so logging
never stalls the compiled program step by step.

Not here: computing metrics (the algorithm does that inside `jit`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlzoo.stats import bootstrap_ci

FIXED_COLUMNS = ("update", "env_steps", "config", "seed")


class MetricsCSV:
    """Appends per-update metrics for every member (configuration x seed) to a CSV file."""

    def __init__(self, path: Path, metric_names: Sequence[str], labels: Sequence[str], num_seeds: int):
        self.path = path
        self.metric_names = [m for m in metric_names if m != "env_steps"]
        self.labels = list(labels)
        self.num_seeds = num_seeds
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow([*FIXED_COLUMNS, *self.metric_names])

    def append(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        """`metrics[name]` has shape [members, updates_in_chunk]."""
        env_steps = metrics["env_steps"]
        num_members, num_updates = env_steps.shape
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            for u in range(num_updates):
                for m in range(num_members):
                    row = [first_update + u + 1, int(env_steps[m, u]), self.labels[m // self.num_seeds],
                           m % self.num_seeds]
                    row += [_fmt(metrics[name][m, u]) for name in self.metric_names]
                    writer.writerow(row)

    def truncate_after(self, update: int) -> None:
        """Drops rows logged after `update` (a killed run may have logged past its last checkpoint), and a
        partial row (a run killed while writing one)."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            lines = f.read().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut off mid-write: every whole row ends with a newline
        rows = list(csv.reader(lines))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if _complete(r, len(rows[0])) and int(r[0]) <= update]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows(kept)


def _complete(row: list[str], width: int) -> bool:
    """A whole metrics row: every column there, each one a number (the config label excepted)."""
    if len(row) != width or not row[0].isdigit():
        return False
    try:
        [float(v) for i, v in enumerate(row) if i != 2]  # column 2 is the configuration's label
    except ValueError:
        return False
    return True


def _fmt(value: float) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.6g}"


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """Reads `metrics.csv` back into columns (config as str, the rest as float)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {name: [r[name] for r in rows] for name in (rows[0] if rows else {})}
    return {k: np.asarray(v) if k == "config" else np.asarray(v, dtype=np.float64) for k, v in columns.items()}


class ProgressBar:
    """A rich progress bar over env steps with steps/s and the latest mean episode return."""

    def __init__(self, total_env_steps: int, description: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} steps/s"), TextColumn("return {task.fields[ret]}"),
            TimeElapsedColumn(), transient=False,
        )
        self.task = self.progress.add_task(description, total=total_env_steps, rate="-", ret="-")
        self.progress.start()

    def update(self, env_steps: int, steps_per_s: float, episode_return: float) -> None:
        if self.enabled:
            ret = "-" if math.isnan(episode_return) else f"{episode_return:.1f}"
            self.progress.update(self.task, completed=env_steps, rate=f"{steps_per_s:,.0f}", ret=ret)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def plot_learning_curves(metrics_csv: Path, png_path: Path, title: str, metric: str = "episode_return") -> None:
    """Mean over seeds of `metric` against env steps, one line per configuration, min-max shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(data["config"]):
        rows = data["config"] == label
        steps, values = data["env_steps"][rows], data[metric][rows]
        unique_steps = np.unique(steps)
        per_step = [values[steps == s] for s in unique_steps]
        with np.errstate(all="ignore"):
            mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in per_step])
            low = np.array([np.nanmin(v) if np.isfinite(v).any() else np.nan for v in per_step])
            high = np.array([np.nanmax(v) if np.isfinite(v).any() else np.nan for v in per_step])
        (line,) = ax.plot(unique_steps, mean, label=label, linewidth=1.5)
        ax.fill_between(unique_steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def results_table(labels: Sequence[str], final_returns: np.ndarray, title: str) -> str:
    """Prints and returns a table of final return per configuration: mean and 95% bootstrap CI over seeds.

    `final_returns` has shape [configurations, seeds].
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("config", "seeds", "final return (mean)", "95% CI"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for label, values in zip(labels, final_returns):
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if len(finite) else float("nan")
        low, high = bootstrap_ci(finite)
        table.add_row(label, str(len(values)), f"{mean:.2f}", f"[{low:.2f}, {high:.2f}]")
    console = Console()
    with console.capture() as capture:
        console.print(table)
    text = capture.get()
    print(text, end="")
    return text
