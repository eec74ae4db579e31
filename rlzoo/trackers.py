"""Optional experiment-tracker logging: TensorBoard and Weights & Biases, CleanRL style.

After each chunk of updates the host holds `metrics[name]` of shape
[members, updates_in_chunk] (members = configurations x seeds, configuration-major,
with `env_steps` among them). A `MetricSink` writes one chunk to a tracker in one
batch and flushes it, so a tracker never stalls the compiled program step by step.
Scalars are named the way CleanRL names them, so runs line up with CleanRL's in the
same dashboard: `charts/episodic_return`, `charts/episodic_length`, `charts/SPS`
(when a metric `SPS`/`sps`/`steps_per_s` is given) and `losses/<name>` for every
other metric, with env steps on the x axis.

`make_sinks` turns the `--log` names into sinks; a missing optional package becomes a
`ConfigError` naming the pip extra to install. `tensorboardX` and `wandb` are imported
only when a sink is made, so rlzoo runs without them.

Not here: the CSV, progress bar, plots and results table every run writes
(`rlzoo.logging`), computing metrics (the algorithm does that inside `jit`), and
resuming a wandb run across processes (a resumed training run starts a new wandb run).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from rlzoo.trainer import ConfigError

BACKENDS = ("tensorboard", "wandb")
"""The names `--log` accepts."""

STEP_METRIC = "env_steps"
"""The metric used as the x axis; it is not logged as a scalar of its own."""

CHART_TAGS = {
    "episode_return": "charts/episodic_return",
    "episodic_return": "charts/episodic_return",
    "episode_length": "charts/episodic_length",
    "episodic_length": "charts/episodic_length",
    "SPS": "charts/SPS",
    "sps": "charts/SPS",
    "steps_per_s": "charts/SPS",
}

# backend name -> (module to import, pip extra that installs it)
_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


def run_name(env_id: str, algo: str, seed: int, timestamp: float | None = None) -> str:
    """CleanRL's run name, `"{env_id}__{algo}__{seed}__{unix time}"`, with "/" in `env_id` as "-"."""
    stamp = int(time.time() if timestamp is None else timestamp)
    return f"{env_id.replace('/', '-')}__{algo}__{seed}__{stamp}"


def metric_tag(name: str) -> str:
    """The CleanRL-style tag for a metric: `charts/...` for returns, lengths and SPS, else `losses/<name>`."""
    return CHART_TAGS.get(name, f"losses/{name}")


def member_names(labels: Sequence[str], num_seeds: int) -> list[str]:
    """`"{label}__seed{s}"` for every member, configuration-major (member m = labels[m // num_seeds], seed m % num_seeds)."""
    return [f"{label}__seed{s}" for label in labels for s in range(num_seeds)]


class MetricSink:
    """Receives every chunk of metrics; `close` once training ends. Usable as a context manager."""

    def write_chunk(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        """Writes updates first_update+1 .. first_update+n; `metrics[name]` has shape [members, n]."""
        raise NotImplementedError

    def close(self) -> None:
        """Flushes and releases the tracker."""

    def __enter__(self) -> MetricSink:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class TensorBoardSink(MetricSink):
    """One TensorBoard run per member, `log_dir/"{label}__seed{s}"` (just `log_dir` when there is one member).

    Each run gets the config once, as a `hyperparameters` text table (as CleanRL writes it)
    and as HParams-dashboard hyperparameters (with the member's configuration and seed).
    `purge_step`, for a resumed run, makes TensorBoard drop events an earlier, killed
    process logged at env steps >= purge_step (pass the first env step that is logged again).
    """

    def __init__(self, log_dir: Path, labels: Sequence[str], num_seeds: int, config: Mapping[str, Any],
                 purge_step: int | None = None):
        tbx = _require("tensorboard")
        from tensorboardX.proto.summary_pb2 import Summary  # optional dependency: imported only here
        from tensorboardX.summary import hparams

        self._summary_cls = Summary
        self.log_dir = Path(log_dir)
        self.labels, self.num_seeds = list(labels), num_seeds
        names = member_names(labels, num_seeds)
        flat = _flatten(config)
        self.writers = []
        for m, name in enumerate(names):
            run_dir = self.log_dir if len(names) == 1 else self.log_dir / _safe_path(name)
            writer = tbx.SummaryWriter(logdir=str(run_dir), purge_step=purge_step, max_queue=1024, flush_secs=3600)
            member = {**flat, "member.config": self.labels[m // num_seeds], "member.seed": m % num_seeds}
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
                f"|{key}|{_text(value)}|" for key, value in member.items()))
            for summary in hparams({k: _hparam(v) for k, v in member.items()}, {"charts/episodic_return": 0.0}):
                writer.file_writer.add_summary(summary)
            writer.flush()
            self.writers.append(writer)
        self._last_time = time.time()

    def write_chunk(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        env_steps = np.asarray(metrics[STEP_METRIC])
        num_members, num_updates = env_steps.shape
        if num_members != len(self.writers):
            raise ValueError(f"metrics have {num_members} members, the sink was made for {len(self.writers)}")
        columns = _columns(metrics, env_steps.shape)
        # Updates in a chunk all reach the host at its end: spread their wall times over the chunk.
        now = time.time()
        walltimes = np.linspace(self._last_time, now, num_updates + 1)[1:]
        self._last_time = now
        for m, writer in enumerate(self.writers):
            for u in range(num_updates):
                values = [self._summary_cls.Value(tag=tag, simple_value=v[m, u])
                          for tag, v in columns.items() if not math.isnan(v[m, u])]
                if values:
                    writer.file_writer.add_summary(self._summary_cls(value=values), int(env_steps[m, u]),
                                                   float(walltimes[u]))
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


class WandbSink(MetricSink):
    """One Weights & Biases run for all members.

    Keys are the CleanRL tags (`charts/episodic_return`, ...) for a single member, and
    `"{label}/seed{s}/charts/episodic_return"` etc. when there are several. The wandb step
    is member 0's env steps (wandb needs one monotone step per run; every member of a
    run steps alike). `mode` defaults to `$WANDB_MODE` (wandb's default, online, if unset);
    `"offline"` writes locally for `wandb sync` later. wandb writes into `root_dir/wandb/`.
    """

    def __init__(self, project: str, run_name: str, labels: Sequence[str], num_seeds: int,
                 config: Mapping[str, Any], mode: str | None = None, root_dir: Path | None = None):
        wandb = _require("wandb")
        self.labels, self.num_seeds = list(labels), num_seeds
        names = member_names(labels, num_seeds)
        self.prefixes = [""] if len(names) == 1 else [
            f"{_safe_path(self.labels[m // num_seeds])}/seed{m % num_seeds}/" for m in range(len(names))]
        if root_dir is not None:
            Path(root_dir).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=project, name=run_name, config=dict(config),
                                  mode=mode or os.environ.get("WANDB_MODE"), reinit="create_new",
                                  dir=None if root_dir is None else str(root_dir))
        except wandb.errors.Error as error:
            raise ConfigError(f"--log=wandb: wandb.init failed: {error} Log in with `wandb login`, or set "
                              f"WANDB_MODE=offline to log locally and `wandb sync` the run later") from error
        self._last_step = -1

    def write_chunk(self, first_update: int, metrics: dict[str, np.ndarray]) -> None:
        env_steps = np.asarray(metrics[STEP_METRIC])
        num_members, num_updates = env_steps.shape
        if num_members != len(self.prefixes):
            raise ValueError(f"metrics have {num_members} members, the sink was made for {len(self.prefixes)}")
        columns = _columns(metrics, env_steps.shape)
        for u in range(num_updates):
            step = int(env_steps[0, u])
            if step <= self._last_step:  # wandb drops (and warns about) steps that do not increase
                continue
            row = {prefix + tag: float(v[m, u]) for tag, v in columns.items()
                   for m, prefix in enumerate(self.prefixes) if not math.isnan(v[m, u])}
            self.run.log(row, step=step)
            self._last_step = step

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def requested_backends(names: str | Sequence[str]) -> list[str]:
    """The backends `--log` names, in order, each checked known and installed (the run harness calls this before
    it creates the run folder, so a bad `--log` leaves nothing behind)."""
    entries = [names] if isinstance(names, str) else list(names)
    requested = list(dict.fromkeys(part.strip() for entry in entries for part in entry.split(",") if part.strip()))
    for name in requested:
        if name not in BACKENDS:
            raise ConfigError(f"log={name!r} is not allowed: choose from {', '.join(BACKENDS)}")
    for name in requested:
        _require(name)
    return requested


def make_sinks(names: Sequence[str], run_dir: Path, run_name: str, labels: Sequence[str], num_seeds: int,
               config: Mapping[str, Any], wandb_project: str = "rlzoo", wandb_mode: str | None = None,
               purge_step: int | None = None) -> list[MetricSink]:
    """The sinks `--log` asks for: TensorBoard under `run_dir/"tensorboard"`, wandb under `run_dir/"wandb"`.

    `names` holds "tensorboard" and/or "wandb" (comma-separated entries are split; repeats
    are ignored); the sinks come back in that order. Every name and package is checked
    before any sink is made, so a bad `--log` leaves nothing behind. `wandb_mode` (else
    `$WANDB_MODE`) goes to `WandbSink`, `purge_step` (for a resumed run) to `TensorBoardSink`.
    """
    requested = requested_backends(names)
    run_dir = Path(run_dir)
    made: dict[str, MetricSink] = {}
    try:  # wandb first: it is the one that can still fail (no login), and TensorBoard then leaves no folder
        if "wandb" in requested:  # wandb.init(dir=D) writes into D/"wandb"
            made["wandb"] = WandbSink(wandb_project, run_name, labels, num_seeds, config, mode=wandb_mode,
                                      root_dir=run_dir)
        if "tensorboard" in requested:
            made["tensorboard"] = TensorBoardSink(run_dir / "tensorboard", labels, num_seeds, config, purge_step)
    except BaseException:
        for sink in made.values():
            sink.close()
        raise
    return [made[name] for name in requested]


def _require(backend: str) -> ModuleType:
    """Imports the package a backend needs, or raises a ConfigError naming the pip extra."""
    module, extra = _PACKAGES[backend]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"--log={backend} needs the {module} package, which is not installed "
                          f"({error}): pip install \"rlzoo[{extra}]\"") from error


def _columns(metrics: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Tag -> float64 array of `shape` for every metric but the step (scalars such as SPS broadcast)."""
    columns = {}
    for name, values in metrics.items():
        if name != STEP_METRIC:
            columns[metric_tag(name)] = np.broadcast_to(np.asarray(values, np.float64).reshape(
                np.shape(values) + (1,) * (2 - np.ndim(values))), shape)
    return columns


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hparam(value: Any) -> bool | int | float | str:
    """A value the HParams dashboard takes: numbers and strings as they are, the rest as JSON text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return _text(value)


def _text(value: Any) -> str:
    """A value as one markdown-table cell: strings as they are, the rest as JSON where possible."""
    if not isinstance(value, str):
        try:
            value = json.dumps(value.item() if isinstance(value, np.generic) else value)
        except (TypeError, ValueError):
            value = str(value)
    return value.replace("|", "\\|").replace("\n", " ")


def _safe_path(name: str) -> str:
    """A name usable as one folder (or wandb key segment): path separators and reserved characters as "-"."""
    return re.sub(r'[\\/:*?"<>|]', "-", name)
