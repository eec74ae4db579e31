"""The one benchmark harness: contenders, seeds, scores, results files and reports.

A benchmark script declares what it compares, `{task: {label: Contender}}`, and
`compare` runs it: for each (task, contender) it trains every seed as one
vmapped program (`train_seeds`), plays greedy evaluation episodes per seed (a
seed's score is their mean return), merges the result into the results file
(`ResultsFile`) at once, so that a crash or a second run keeps what finished,
then draws the learning curves and writes one report per task
(`rlzoo.report`: IQM, mean and median with stratified-bootstrap 95% CIs,
probability of improvement).

Results files have one layout: the budget (e.g. `steps`, `seeds`), then maps
keyed by label and task: `scores[label][task]` is the list of per-seed scores,
and other maps (`times_s`, ...) follow the same keys. One merge policy holds for
every benchmark: the file is re-read just before each write, a result replaces
the same (label, task) entry and keeps the others, a file at another budget is
replaced (with a warning), and a hand-written `note` is kept.

Not here: what a benchmark compares (its script) or how an algorithm trains.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlzoo.evaluate import greedy_member_returns  # noqa: E402
from rlzoo.report import write_report  # noqa: E402
from rlzoo.stats import aggregate_intervals  # noqa: E402
from rlzoo.sweep import expand_members, make_grid, member_sharding, seed_keys, shard_members  # noqa: E402

EVAL_KEY = jax.random.PRNGKey(12345)
warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice")  # curves before the first episode ends


@dataclasses.dataclass(frozen=True)
class Contender:
    """One algorithm set-up: its file's `make_train`, a `Config` and `HParams`."""

    make_train: Callable[[Any], Any]
    config: Any
    hparams: Any

    def settings(self) -> dict[str, Any]:
        """The config (without the env id) and hparams as plain numbers, for the results file."""
        config = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "env_id"}
        return {"config": config, "hparams": {f.name: float(getattr(self.hparams, f.name))
                                              for f in dataclasses.fields(self.hparams)}}


@dataclasses.dataclass
class Trained:
    """Final states and metrics of all seeds ([seeds, ...] and [seeds, updates]) and where the time went."""

    state: Any
    metrics: dict[str, Any]
    times_s: dict[str, float]


def machine() -> str:
    """The processor and the JAX device kind, as results files record them."""
    return f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}"


def task_slug(task: str) -> str:
    """A task name as a file-name part (`brax/hopper` -> `brax_hopper`)."""
    return task.replace("/", "_").replace(":", "_")


def train_seeds(trainer: Any, hparams: Any, num_seeds: int, per_seed_init: bool = False) -> Trained:
    """All seeds as one vmapped program (`Trainer.members`, seeds from 0), compile and run timed apart.

    With `per_seed_init`, each seed's initial state is built by its own call of the jitted `init`
    and the vmapped program scans `update` from the stacked states: on a 2-core CPU (jaxlib 0.10.2)
    the vmapped orthogonal initialisers (batched LAPACK QR) hung inside one program with brax. The
    result equals `train(key, hparams)` per seed.
    """
    if not per_seed_init:
        keys, member_hparams = expand_members(seed_keys(0, num_seeds), make_grid(hparams, {}).hparams)
        keys, member_hparams = shard_members((keys, member_hparams), member_sharding(num_seeds))
        start = time.perf_counter()
        program = jax.jit(trainer.members).lower(keys, member_hparams, trainer.data).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(program(keys, member_hparams, trainer.data))
        run_s = time.perf_counter() - start
        return Trained(state, metrics, {"compile_s": round(compile_s, 2), "run_s": round(run_s, 2),
                                        "total_s": round(compile_s + run_s, 1)})
    start = time.perf_counter()
    init = jax.jit(trainer.init)
    states = [init(key, hparams) for key in seed_keys(0, num_seeds)]
    state = jax.block_until_ready(jax.tree.map(lambda *x: jnp.stack(x), *states))
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    program = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, trainer.num_updates))).lower(state).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(program(state))
    return Trained(state, metrics, {"init_s": round(init_s, 1), "compile_s": round(compile_s, 1),
                                    "run_s": round(time.perf_counter() - start, 1)})


@dataclasses.dataclass
class ResultsFile:
    """A benchmark's results JSON and its one merge policy (module docstring)."""

    path: Path
    budget: dict[str, Any]

    def read(self) -> dict[str, Any]:
        """The file as it is now if it holds this budget; else only its note (a file at another budget is dropped)."""
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text())
        if all(data.get(key) == value for key, value in self.budget.items()):
            return data
        print(f"[bench] {self.path} holds another budget than {self.budget}: replacing it", file=sys.stderr)
        return {"note": data["note"]} if "note" in data else {}

    def record(self, label: str, task: str, **entries: Any) -> dict[str, Any]:
        """Writes `data[name][label][task] = value` for each entry, keeping every other result; returns the data."""
        data = self.read()
        for name, value in entries.items():
            data.setdefault(name, {}).setdefault(label, {})[task] = value
        return self.write(data)

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merges top-level maps (`settings`, `references`, ...) into the file; returns the data."""
        data = self.read()
        for name, value in fields.items():
            data[name] = {**data.get(name, {}), **value} if isinstance(value, Mapping) else value
        return self.write(data)

    def write(self, data: dict[str, Any]) -> dict[str, Any]:
        data = {**({"note": data["note"]} if "note" in data else {}), **self.budget,
                **{k: v for k, v in data.items() if k not in self.budget and k != "note"},
                "jax": jax.__version__, "machine": machine()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2) + "\n")
        return data

    def scores(self) -> dict[str, dict[str, list[float]]]:
        return self.read().get("scores", {})


def plot_curves(path: Path, title: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                ylabel: str = "training episode return") -> None:
    """Mean over seeds with the min-max band, per label: curves[label] = (env_steps [T], values [seeds, T])."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, (env_steps, values) in curves.items():
        line, = ax.plot(env_steps, np.nanmean(values, axis=0), label=label)
        ax.fill_between(env_steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(),
                        alpha=0.15)
    ax.set(title=title, xlabel="environment steps per seed", ylabel=ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(out: Path, scores: Mapping[str, Mapping[str, list[float]]], groups: Mapping[str, list[str]]) -> None:
    """One report per group of tasks, over the labels that have every task of the group; prints each."""
    for name, tasks in groups.items():
        if not tasks:
            continue
        per_label = {label: np.asarray([s[t] for t in tasks]).T for label, s in scores.items()
                     if all(t in s for t in tasks)}
        if per_label:
            folder = out / f"report_{task_slug(name)}"
            write_report(per_label, folder, tasks=list(tasks))
            print((folder / "report.md").read_text())


def iqm_ci(scores: Any) -> list[float]:
    """[IQM, low, high] of per-seed scores, stratified-bootstrap 95% CI (`rlzoo.stats`)."""
    return [float(v) for v in aggregate_intervals(np.asarray(scores, np.float64)[:, None])["iqm"]]


def score_table(scores: Mapping[str, Mapping[str, list[float]]], title: str, digits: int = 1,
                row_names: Mapping[str, str] | None = None) -> str:
    """Markdown: one row per task (named by `row_names`, else the task), one column per label, IQM [95% CI]."""
    tasks = sorted({task for per_task in scores.values() for task in per_task})
    labels = list(scores)
    lines = [f"| {title} | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for task in tasks:
        cells = []
        for label in labels:
            if task not in scores[label]:
                cells.append("")
                continue
            point, low, high = iqm_ci(scores[label][task])
            cells.append(f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]")
        lines.append(f"| {(row_names or {}).get(task, task)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(contenders: Mapping[str, Mapping[str, Contender]], num_seeds: int, out: str | Path,
            budget: dict[str, Any], eval_episodes: int = 10, per_seed_init: bool = False,
            extra_curves: Callable[[dict[str, Any]], dict[str, np.ndarray]] | None = None) -> ResultsFile:
    """Trains, scores and records every (task, label) of `contenders`, then writes curves and reports.

    `extra_curves(metrics) -> {name: values [seeds, T]}` adds plots of other metrics (one file each).
    """
    out = Path(out)
    results = ResultsFile(out / "scores.json", {**budget, "seeds": num_seeds, "eval_episodes": eval_episodes})
    for task, by_label in contenders.items():
        curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"return": {}}
        for label, contender in by_label.items():
            trainer = contender.make_train(contender.config)
            trained = train_seeds(trainer, contender.hparams, num_seeds, per_seed_init)
            start = time.perf_counter()
            per_seed = greedy_member_returns(trainer, trained.state, EVAL_KEY, eval_episodes)
            times = {**trained.times_s, "eval_s": round(time.perf_counter() - start, 1)}
            results.record(label, task, scores=np.asarray(per_seed, np.float64).tolist(), times_s=times)
            results.update(settings={label: contender.settings()})
            env_steps = np.asarray(trained.metrics["env_steps"][0])
            curves["return"][label] = (env_steps, np.asarray(trained.metrics["episode_return"]))
            for name, values in (extra_curves(trained.metrics) if extra_curves else {}).items():
                curves.setdefault(name, {})[label] = (env_steps, values)
            print(f"{task} {label}: greedy {np.mean(per_seed):.2f} (seeds {np.round(per_seed, 2).tolist()}), "
                  f"{times}", flush=True)
        for name, by_curve in curves.items():
            suffix = "" if name == "return" else f"_{name}"
            plot_curves(out / f"curves_{task_slug(task)}{suffix}.png", f"{task}, {num_seeds} seeds", by_curve,
                        "training episode return" if name == "return" else name)
    write_reports(out, results.scores(), {task: [task] for task in contenders})
    return results
