"""The CLI and run-folder contract that every algorithm file keeps.

`run_cli(algo, Config, HParams, make_train)` is each file's `main`: it parses one
flat command line (Config fields, HParams fields, and `RunOptions`: `--seed`,
`--num-seeds`, `--run-dir`, `--resume`, `--sweep`), then `run_experiment` trains
every configuration x seed as one compiled program in chunks of updates and
writes the run folder:

    config.json          resolved config, hyperparameters, sweep, seeds, versions
    metrics.csv          one row per (update, configuration, seed): update, env_steps, config, seed, metrics...
    summary.json         final_return, env_steps, compile_s, run_s, steps_per_s, ...
    learning_curve.png   episode return against env steps
    checkpoints/         orbax checkpoints of the whole training state after each chunk

`--resume RUN_DIR` reloads the run's config.json and its newest checkpoint and
continues; rows logged after that checkpoint are dropped from metrics.csv first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo import checkpoint, footprint, presets
from rlzoo.compile_cache import CacheUse, enable_compile_cache
from rlzoo.trackers import make_sinks, requested_backends, run_name
from rlzoo.watchdog import Watchdog
from rlzoo.trainer import ConfigError, Trainer, check, check_hparams
from rlzoo.evaluate import evaluate_policy_of
from rlzoo.logging import MetricsCSV, ProgressBar, plot_learning_curves, results_table
from rlzoo.sweep import expand_members, make_grid, member_sharding, parse_sweep, seed_keys, shard_members, split_members

CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, EVAL_FILE, PLOT_FILE, CHECKPOINT_DIR, BEST_DIR = (
    "config.json", "summary.json", "metrics.csv", "eval.csv", "learning_curve.png", "checkpoints", "best")


HOST_ONLY_OPTIONS = ("progress", "compile_cache", "hang_factor")
"""RunOptions that cannot change a run's numbers: on --resume they come from the command line, not config.json."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Options of the run itself, shared by every algorithm."""

    seed: int = 0
    """Base seed; the seeds' keys are split from it."""
    num_seeds: int = 1
    """Independent seeds, vmapped in one program."""
    run_dir: str | None = None
    """Run folder (default runs/<env>__<algo>__<seed>__<time>)."""
    resume: str | None = None
    """Continue the run in this folder from its newest checkpoint (its config.json wins over other flags)."""
    sweep: tuple[str, ...] = ()
    """Hyperparameter grid, e.g. --sweep lr=1e-4,3e-4 gamma=0.98,0.99 (HParams fields only)."""
    num_chunks: int = 20
    """Chunks the training is split into: progress, metrics and checkpoints are written after each."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept."""
    progress: bool = True
    """Show a live progress bar."""
    eval_episodes: int = 8
    """Evaluation episodes per seed after each chunk, on separate envs (0: no evaluation)."""
    eval_greedy: bool = True
    """Evaluate the greedy policy (mode of the action distribution); else sample actions."""
    log: tuple[str, ...] = ()
    """Extra logging backends beside metrics.csv: tensorboard, wandb (CleanRL-style run names)."""
    wandb_project: str = "rlzoo"
    """Weights & Biases project, with --log wandb (WANDB_MODE=offline works without an account)."""
    compile_cache: bool = True
    """Keep compiled programs in a persistent cache (~/.cache/rlzoo/jax; RLZOO_COMPILE_CACHE=0 also turns it off)."""
    hang_factor: float = 50.0
    """A chunk that runs this many times longer than the slowest before it (and >= 10 minutes) is a hang: its
    stacks go to the run folder and the run exits with code 3 (rlzoo/watchdog.py). 0 turns the watchdog off."""
    preset: str | None = None
    """Preset of Config and HParams values (docs/presets.md): a name, or 'none' for the plain defaults. Default:
    the algorithm's preset for --env-id, if it has one. Flags given on the command line override it."""

    def __post_init__(self):
        check(-2**31 <= self.seed < 2**31, "seed", self.seed, "must fit in 32 bits: -2**31 <= seed < 2**31")
        check(self.num_seeds >= 1, "num_seeds", self.num_seeds, "must be >= 1")
        check(self.num_chunks >= 1, "num_chunks", self.num_chunks, "must be >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        check(self.eval_episodes >= 0, "eval_episodes", self.eval_episodes, "must be >= 0")
        check(self.hang_factor == 0 or self.hang_factor >= 2, "hang_factor", self.hang_factor,
              "must be 0 (no watchdog) or >= 2")


def plan_chunks(num_updates: int, target_chunks: int) -> list[int]:
    """Chunk sizes summing to `num_updates`: equal sizes when a divisor is close, else one remainder chunk.

    Each distinct size is one compiled program, so at most two are used.
    """
    ideal = math.ceil(num_updates / min(target_chunks, num_updates))
    # The smallest divisor >= ideal is num_updates // (the largest count of chunks <= target that divides it):
    # at most target_chunks tries, however many updates.
    count = next(k for k in range(min(target_chunks, num_updates), 0, -1)
                 if num_updates % k == 0 and num_updates // k >= ideal)
    divisor = num_updates // count
    if divisor <= 2 * ideal:
        return [divisor] * (num_updates // divisor)
    return [ideal] * (num_updates // ideal) + ([num_updates % ideal] if num_updates % ideal else [])


class TrainingDiverged(RuntimeError):
    """A loss or statistic became NaN or infinite inside the compiled program."""


def check_finite(metrics: dict[str, np.ndarray], first_update: int, labels: list[str], num_seeds: int) -> None:
    """Raises TrainingDiverged naming the first non-finite quantity, its update, configuration and seed.

    `episode_*` metrics are exempt: they are NaN until an episode has finished.
    """
    for name, values in metrics.items():
        if name.startswith("episode_"):
            continue
        bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
        if bad.any():
            member, update = (int(i[0]) for i in np.nonzero(bad))
            raise TrainingDiverged(
                f"{name} became {values[member, update]} at update {first_update + update + 1} "
                f"(configuration {labels[member // num_seeds]}, seed {member % num_seeds}); the last good "
                f"checkpoint is kept. Lower the learning rate or check the inputs.")


def default_run_dir(env_id: str, algo: str, seed: int) -> Path:
    safe_env = env_id.replace("/", "-")
    return Path("runs") / f"{safe_env}__{algo}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def package_version(name: str) -> str:
    """The installed version of a distribution, or "unknown"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_run_config(run_dir: Path, config_cls: type, hparams_cls: type) -> tuple[Any, Any, RunOptions]:
    """Reads a run folder's config.json back into (Config, HParams, RunOptions)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"resume={str(run_dir)!r}: no {CONFIG_FILE} there; is it a run folder?")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"resume={str(run_dir)!r}: {path} is not valid JSON ({error}); it was damaged or edited "
                          f"by hand") from None
    parts = []
    for section, cls in (("config", config_cls), ("hparams", hparams_cls), ("run", RunOptions)):
        values = saved.get(section) if isinstance(saved, dict) else None
        if not isinstance(values, dict):
            raise ConfigError(f"resume={str(run_dir)!r}: {path} has no {section!r} section; is it a run folder?")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"resume={str(run_dir)!r}: {path} section {section!r} has unknown keys {unknown}; "
                              f"allowed: {', '.join(sorted(known))} (written by another version, or edited)")
        parts.append({k: _tuples(v) for k, v in values.items()})
    config_values, hparams_values, run = parts
    return (config_cls(**config_values), hparams_cls(**hparams_values),
            RunOptions(**{**run, "run_dir": str(run_dir), "resume": str(run_dir)}))


def describe_run(algo: str, config: Any, hparams: Any, labels: list[str], options: RunOptions) -> dict[str, Any]:
    """What a checkpoint is written under, as JSON values; resuming or loading requires equality."""
    return json.loads(json.dumps({
        "algo": algo, "config": dataclasses.asdict(config), "hparams": dataclasses.asdict(hparams),
        "configs": labels, "seed": options.seed, "num_seeds": options.num_seeds, "num_chunks": options.num_chunks}))


class LoadedRun(NamedTuple):
    config: Any
    hparams: Any  # the base HParams (a sweep's members are in `labels`)
    labels: list[str]
    trainer: Trainer
    state: Any  # the whole training state, leading member axis [configurations * seeds]
    update: int  # updates done at this checkpoint


def load_run(run_dir: str | Path, make_train: Callable[[Any], Trainer], config_cls: type, hparams_cls: type,
             best: bool = False) -> LoadedRun:
    """Loads a run folder's newest (or, with `best`, its best-evaluated) checkpoint."""
    config, hparams, options = load_run_config(Path(run_dir), config_cls, hparams_cls)
    grid = make_grid(hparams, parse_sweep(options.sweep, hparams_cls, config_cls))
    trainer = make_train(config)
    keys, member_hparams = expand_members(seed_keys(options.seed, options.num_seeds), grid.hparams)
    like = jax.eval_shape(trainer.init_members, keys, member_hparams, trainer.data)
    like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
    directory = Path(run_dir) / CHECKPOINT_DIR / (BEST_DIR if best else "")
    manager = checkpoint.best_manager(directory) if best else checkpoint.checkpoint_manager(directory)
    algo = json.loads((Path(run_dir) / CONFIG_FILE).read_text())["algo"]
    written_under = describe_run(algo, config, hparams, grid.labels, options)
    update, state = checkpoint.restore_latest(manager, like, written_under)
    return LoadedRun(config, hparams, grid.labels, trainer, state, update)


LOCK_FILE = ".lock"


def make_run_folder(run_dir: Path) -> None:
    """Creates the run folder, or says clearly why it cannot (a file in the way, no permission, ...)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / LOCK_FILE
        probe.touch()
    except OSError as error:
        raise ConfigError(f"run_dir={str(run_dir)!r} cannot be used as a run folder: {error.strerror or error}; "
                          f"allowed: a folder this user can create and write") from None


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """One writer per run folder: an exclusive lock on `run_dir/.lock`, held while the run writes.

    The lock is the operating system's (`flock`), so it goes with the process that holds it, also when that
    process is killed: a lock file left behind by a crash holds nothing and the next run takes it. The file
    names the holder, and a second writer is refused with that name."""
    handle = (run_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run_dir={str(run_dir)!r} is in use by {holder}; allowed: wait for that run to end "
                          f"(or stop it), or choose another --run-dir") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_folder_belongs_to_this_run(run_dir: Path, options: RunOptions) -> None:
    """A new run needs a folder without another run's config.json or checkpoints."""
    if options.resume:
        return
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"run_dir={str(run_dir)!r} already holds a run: continue it with --resume {run_dir} "
                          f"or choose another --run-dir")
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise ConfigError(f"run_dir={str(run_dir)!r} holds checkpoints but no {CONFIG_FILE}: they belong to another "
                          f"run; allowed: an empty or new --run-dir (move or delete {checkpoints} first)")


INT32_MAX = 2**31 - 1


def check_step_counts_fit_int32(config: Any, trainer: Trainer) -> None:
    """The compiled programs count env steps (offline: gradient steps) in int32; a larger budget would wrap."""
    total = trainer.num_updates * trainer.env_steps_per_update
    field = "total_timesteps" if hasattr(config, "total_timesteps") else "total_updates"
    check(total <= INT32_MAX, field, getattr(config, field, total),
          f"must be <= {INT32_MAX:,} (2**31 - 1) steps per run: the program counts steps in int32")


def warn_if_budget_is_cut(config: Any, trainer: Trainer, origin: str = "flag") -> None:
    """Says loudly when total_timesteps is not a whole number of updates, so fewer steps are trained. Not for a
    budget that a preset or the defaults set (`origin`): PureJaxRL's CartPole 5e5 steps, for one, are 976 updates
    of 512 steps there too."""
    asked = getattr(config, "total_timesteps", None)
    trained = trainer.num_updates * trainer.env_steps_per_update
    if asked is not None and trained != asked and origin == "flag":
        step = trainer.env_steps_per_update
        lower, higher = trained, trained + step
        print(f"warning: total_timesteps={asked} is not a multiple of the {step} env steps of one update, so "
              f"{trained} steps are trained; use {lower} or {higher} for an exact budget", file=sys.stderr,
              flush=True)


def run_experiment(algo: str, make_train: Callable[[Any], Trainer], config: Any, hparams: Any,
                   options: RunOptions, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains every configuration x seed and writes the run folder; returns the summary. `provenance` (the
    preset used and each value's origin, `apply_preset`) goes into config.json."""
    check_hparams(hparams)
    grid = make_grid(hparams, parse_sweep(options.sweep, type(hparams), type(config)))
    trainer = make_train(config)  # checks the env, the dataset and the sizes before anything is written
    if options.resume and getattr(getattr(trainer.eval_env, "spec", None), "host", False):
        raise ConfigError(f"resume={options.resume!r}: env_id {config.env_id!r} steps on the host (rlzoo.host_envs), "
                          f"whose state a checkpoint cannot hold; allowed: --resume with JAX envs only, or start "
                          f"a new run (the checkpoints still hold the agent)")
    requested_backends(options.log)
    check_step_counts_fit_int32(config, trainer)
    warn_if_budget_is_cut(config, trainer, (provenance or {}).get("origins", {}).get("total_timesteps", "flag"))
    keys, member_hparams = expand_members(seed_keys(options.seed, options.num_seeds), grid.hparams)
    sharding = member_sharding(keys.shape[0])
    footprint.check_run_fits(trainer, keys, member_hparams, options.eval_episodes,
                             1 if sharding is None else len(sharding.mesh.devices.flat), dataclasses.asdict(config))
    run_dir = Path(options.run_dir or default_run_dir(config.env_id, algo, options.seed))
    make_run_folder(run_dir)
    with run_folder_lock(run_dir):
        check_folder_belongs_to_this_run(run_dir, options)
        if not options.resume:
            write_json(run_dir / CONFIG_FILE, {
                "algo": algo, "config": dataclasses.asdict(config), "hparams": dataclasses.asdict(hparams),
                "run": {k: v for k, v in dataclasses.asdict(options).items() if k not in ("run_dir", "resume")},
                "configs": grid.labels,
                "versions": {p: package_version(p) for p in ("rlzoo", "jax", "flax", "optax", "gymnax", "brax")},
                "devices": [str(d) for d in jax.local_devices()],
                **(provenance or {}),
            })
        keys, member_hparams = shard_members((keys, member_hparams), sharding)
        return _train_in_folder(algo, trainer, config, hparams, options, grid, run_dir, keys, member_hparams,
                                sharding)


def _train_in_folder(algo: str, trainer: Trainer, config: Any, hparams: Any, options: RunOptions, grid: Any,
                     run_dir: Path, keys: jax.Array, member_hparams: Any, sharding: Any) -> dict[str, Any]:
    """run_experiment's training, with the run folder made, locked and its config.json written; `keys` and
    `member_hparams` have the leading member axis, placed by `sharding` (None: one device)."""
    num_seeds, num_configs = options.num_seeds, len(grid.labels)
    chunks = plan_chunks(trainer.num_updates, options.num_chunks)

    compiles = CacheUse()  # time, cache hits and misses of this run's compiles
    with compiles:
        init = jax.jit(trainer.init_members).lower(keys, member_hparams, trainer.data).compile()
    run_start = time.perf_counter()
    state = init(keys, member_hparams, trainer.data)
    jax.block_until_ready(state)
    run_s = time.perf_counter() - run_start

    compiled_chunks: dict[int, Any] = {}
    with compiles:  # tracing, counted as compiling
        shared = trainer.shared_counters(keys, member_hparams, trainer.data)
    for size in sorted(set(chunks)):
        run_chunk = lambda s, hp, data, n=size: trainer.run_members(s, hp, n, data, shared)  # noqa: E731
        with compiles:
            compiled_chunks[size] = jax.jit(run_chunk).lower(state, member_hparams, trainer.data).compile()

    written_under = describe_run(algo, config, hparams, grid.labels, options)
    manager = checkpoint.checkpoint_manager(run_dir / CHECKPOINT_DIR, options.keep_checkpoints)
    evaluate_members, eval_csv = None, None
    if trainer.act is not None and options.eval_episodes > 0:
        with compiles:
            evaluate_members = jax.jit(jax.vmap(make_member_evaluation(trainer, options))).lower(state,
                                                                                               keys).compile()
        eval_csv = MetricsCSV(run_dir / EVAL_FILE, ["eval_return", "eval_length"], grid.labels, num_seeds)
        best = checkpoint.best_manager(run_dir / CHECKPOINT_DIR / BEST_DIR)
    updates_done = 0
    if options.resume and manager.all_steps():
        updates_done, state = checkpoint.restore_latest(manager, state, written_under)
    sinks = make_sinks(options.log, run_dir, run_name(config.env_id, algo, options.seed), grid.labels, num_seeds,
                       describe_run(algo, config, hparams, grid.labels, options), wandb_project=options.wandb_project,
                       purge_step=updates_done * trainer.env_steps_per_update + 1 if updates_done else None)
    bar = ProgressBar(trainer.num_updates * trainer.env_steps_per_update, f"{algo} {config.env_id}", options.progress)
    steps_this_session, last_metrics, last_eval, metrics_csv = 0, {}, None, None
    best_score = checkpoint.best_metric(best, "eval_return") if evaluate_members is not None else None

    def write_chunk_outputs(chunk_start: int, size: int, state: Any, metrics: Any, eval_metrics: Any) -> None:
        """Chunk outputs: metrics rows, the finiteness check, the checkpoint, evaluation rows, progress."""
        nonlocal steps_this_session, last_metrics, last_eval, metrics_csv, best_score
        metrics = jax.device_get(metrics)  # waits for this chunk only: the next one is already dispatched
        if metrics_csv is None:
            metrics_csv = MetricsCSV(run_dir / METRICS_FILE, list(metrics), grid.labels, num_seeds)
            for csv_file in (metrics_csv, eval_csv):
                if csv_file is not None:
                    csv_file.truncate_after(updates_done)
        metrics_csv.append(chunk_start - size, metrics)
        for sink in sinks:
            sink.write_chunk(chunk_start - size, metrics)
        check_finite(metrics, chunk_start - size, grid.labels, num_seeds)
        checkpoint.save(manager, chunk_start, state, written_under)  # asynchronous: orbax writes in the background
        if eval_metrics is not None:
            eval_metrics = jax.device_get(eval_metrics)
            eval_metrics["env_steps"] = metrics["env_steps"][:, -1:]
            eval_csv.append(chunk_start - 1, eval_metrics)
            last_eval = eval_metrics["eval_return"][:, -1]
            score = float(np.mean(last_eval))
            if improves(score, best_score):  # the best checkpoint is written only when it changes
                checkpoint.save(best, chunk_start, state, written_under, metrics={"eval_return": score})
                best_score = score
        steps_this_session += size * trainer.env_steps_per_update * keys.shape[0]
        last_metrics = {k: v[:, -1] for k, v in metrics.items()}
        bar.update(int(metrics["env_steps"][0, -1]), steps_this_session / (run_s + time.perf_counter() - loop_start),
                   mean_of_finished(last_metrics["episode_return"]))
        watchdog.beat()

    loop_start = time.perf_counter()
    watchdog = Watchdog(run_dir, options.hang_factor).start()
    try:
        # JAX dispatches asynchronously: chunk k+1 (and its evaluation) is queued before chunk k's outputs are
        # written, so writing overlaps computing. run_s is the loop's wall time, outputs included.
        pending = None
        chunk_start = 0
        for size in chunks:
            chunk_start += size
            if chunk_start <= updates_done:
                continue
            state, metrics = compiled_chunks[size](state, member_hparams, trainer.data)
            eval_metrics = None
            if evaluate_members is not None:
                eval_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(options.seed), chunk_start),
                                             keys.shape[0])
                eval_metrics = evaluate_members(state, shard_members(eval_keys, sharding))
            if pending is not None:
                done, pending = pending, None  # never written twice, even if interrupted while writing
                write_chunk_outputs(*done)
            pending = (chunk_start, size, state, metrics, eval_metrics)
            if _STOP_REQUESTED.is_set():  # SIGINT/SIGTERM: finish the chunk in flight, write it, stop
                break
        if pending is not None:
            done, pending = pending, None
            write_chunk_outputs(*done)
    finally:
        watchdog.stop()
        bar.close()
        for sink in sinks:
            sink.close()
        manager.wait_until_finished()
        if evaluate_members is not None:
            best.wait_until_finished()
    run_s += time.perf_counter() - loop_start
    if _STOP_REQUESTED.is_set() and chunk_start < trainer.num_updates:
        raise RunInterrupted(f"stopped after update {chunk_start} of {trainer.num_updates}, whose checkpoint and "
                             f"metrics are written; continue with --resume {run_dir}")
    compile_s = compiles.seconds

    if not last_metrics:  # resumed a run that had already finished
        raise ConfigError(f"resume={str(run_dir)!r}: the run is already complete ({updates_done} updates)")
    final = split_members(np.asarray(last_metrics["episode_return"], np.float64), num_configs)
    per_config = [mean_of_finished(v) for v in final]
    summary = {
        "final_return": per_config[0] if num_configs == 1 else dict(zip(grid.labels, per_config)),
        "final_eval_return": None if evaluate_members is None else _per_config_mean(last_eval, grid.labels),
        "final_return_per_seed": {label: v.tolist() for label, v in zip(grid.labels, final)},
        "env_steps": int(trainer.num_updates * trainer.env_steps_per_update),
        "compile_s": compile_s,
        "compile_cache": {"dir": jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache
                          else None, "hits": compiles.hits, "misses": compiles.misses},
        "run_s": run_s,
        "steps_per_s": steps_this_session / run_s,
        "num_seeds": num_seeds,
        "configs": grid.labels,
        "resumed_from_update": updates_done,
        "run_dir": str(run_dir),
        "devices": len(jax.local_devices()) if sharding is None else len(sharding.mesh.devices.flat),
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    plot_learning_curves(run_dir / METRICS_FILE, run_dir / PLOT_FILE, f"{algo} on {config.env_id}")
    results_table(grid.labels, final, f"{algo} on {config.env_id}: {summary['env_steps']:,} steps, "
                  f"{num_seeds} seed(s); compile {compile_s:.1f}s, run {run_s:.1f}s, "
                  f"{summary['steps_per_s']:,.0f} steps/s")
    print(f"run folder: {run_dir}")
    return summary


def make_member_evaluation(trainer: Trainer, options: RunOptions) -> Callable:
    """(state, key) -> mean return and length of `eval_episodes` episodes of one member's policy."""

    def evaluate_member(state: Any, key: jax.Array) -> dict[str, jax.Array]:
        result = evaluate_policy_of(trainer, state, key, options.eval_episodes, options.eval_greedy)
        return {"eval_return": result.episode_return.mean()[None],
                "eval_length": result.episode_length.mean(dtype=jnp.float32)[None]}

    return evaluate_member


def improves(score: float, best: float | None) -> bool:
    """A new best evaluation: strictly higher (ties keep the earlier checkpoint), and anything beats NaN."""
    return best is None or math.isnan(best) or score > best


def mean_of_finished(episode_returns: np.ndarray) -> float:
    """Mean over the episodes that finished (NaN marks none); NaN, without numpy's warning, if none did."""
    values = np.asarray(episode_returns, np.float64)
    finished = values[~np.isnan(values)]
    return float(finished.mean()) if finished.size else float("nan")


def _per_config_mean(values: np.ndarray, labels: list[str]) -> float | dict[str, float]:
    means = [float(v.mean()) for v in split_members(np.asarray(values, np.float64), len(labels))]
    return means[0] if len(labels) == 1 else dict(zip(labels, means))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean(payload), indent=2) + "\n")
    tmp.replace(path)


def flags_given(argv: list[str]) -> set[str]:
    """The field names set on a command line: `--total-timesteps 5` and `--hidden-sizes=64 64` give
    total_timesteps and hidden_sizes; `--no-double` gives double."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name[3:] if name.startswith("no_") else name)
    return names


def apply_preset(algo: str, config: Any, hparams: Any, name: str | None,
                 given: set[str]) -> tuple[Any, Any, dict[str, Any]]:
    """Config and HParams with the run's preset (`presets.choose_preset`) under the flags `given`, and the
    provenance for config.json: the preset's label (or None) and each field's origin (default, preset, flag)."""
    preset = presets.choose_preset(algo, config.env_id, name)
    config_values, hparams_values = ({}, {}) if preset is None else presets.split_values(
        preset, type(config), type(hparams))
    config = dataclasses.replace(config, **{k: v for k, v in config_values.items() if k not in given})
    hparams = dataclasses.replace(hparams, **{k: v for k, v in hparams_values.items() if k not in given})
    origins = {field.name: "flag" if field.name in given else
               "preset" if field.name in config_values or field.name in hparams_values else "default"
               for part in (config, hparams) for field in dataclasses.fields(part)}
    return config, hparams, {"preset": None if preset is None else preset.label, "origins": origins}


def describe_preset(preset_label: str | None, origins: dict[str, str]) -> str:
    """One line for the terminal: which preset the run uses and what overrides it."""
    if preset_label is None:
        return "preset: none (the plain defaults; docs/presets.md lists the presets)"
    preset = next(p for p in presets.PRESETS if p.label == preset_label)
    overridden = sorted(k for k in preset.values if origins.get(k) == "flag")
    return (f"preset: {preset.label} for {', '.join(preset.env_ids)} ({preset.source})"
            + (f"; overridden by flags: {', '.join(overridden)}" if overridden else "")
            + "; --preset none for the plain defaults")


class RunInterrupted(Exception):
    """The run stopped on SIGINT or SIGTERM after writing its last chunk; `--resume` continues it."""


_STOP_REQUESTED = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    """The first SIGINT/SIGTERM asks the run to stop after the chunk in flight; a second one stops it now."""
    if _STOP_REQUESTED.is_set():
        raise KeyboardInterrupt
    _STOP_REQUESTED.set()


@contextlib.contextmanager
def stop_gracefully_on_signals() -> Iterator[None]:
    """While a CLI run lasts, Ctrl-C and SIGTERM (a scheduler's stop) end it between chunks: the chunk in flight
    is finished and written, checkpoint writes complete, and one line is printed; the handlers are put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP_REQUESTED.clear()
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP_REQUESTED.clear()  # a later run in this process (a script's, a test's) starts afresh


def run_cli(algo: str, config_cls: type, hparams_cls: type, make_train: Callable[[Any], Trainer],
            args: list[str] | None = None) -> dict[str, Any] | None:
    """Parses the command line and runs; errors in the input print one clear line and exit with code 2."""
    import tyro

    def parse(config, hparams, run):
        return config, hparams, run

    parse.__annotations__ = {"config": config_cls, "hparams": hparams_cls, "run": RunOptions}
    listing = "; ".join(f"{p.name} ({', '.join(p.env_ids)}, {p.source})" for p in presets.presets_of(algo))
    description = (sys.modules[make_train.__module__].__doc__ or "") + (
        f"\n\nPresets (picked by --env-id; --preset NAME or none; flags override them): {listing}"
        if listing else "")

    def cli(argv):
        return tyro.cli(parse, args=argv, config=(tyro.conf.OmitArgPrefixes,), description=description)

    argv = sys.argv[1:] if args is None else args
    try:
        config, hparams, options = cli(argv)
        provenance = None
        if not options.resume:
            config, hparams, provenance = apply_preset(algo, config, hparams, options.preset, flags_given(argv))
            print(describe_preset(provenance["preset"], provenance["origins"]), flush=True)
        if options.resume:
            given = (config, hparams, options)
            defaults = cli(["--resume", options.resume])
            config, hparams, options = load_run_config(Path(options.resume), config_cls, hparams_cls)
            if given[2].run_dir is not None and Path(given[2].run_dir).resolve() != Path(options.resume).resolve():
                raise ConfigError(f"run_dir={given[2].run_dir!r} contradicts resume={options.resume!r}: a resumed "
                                  f"run stays in its own folder; allowed: --resume alone")
            options = dataclasses.replace(options, **{name: getattr(given[2], name) for name in HOST_ONLY_OPTIONS})
            check_resume_flags(given, defaults, (config, hparams, options), flags_given(argv))
            saved = json.loads((Path(options.resume) / CONFIG_FILE).read_text())
            provenance = {key: saved[key] for key in ("preset", "origins") if key in saved}
        enable_compile_cache(options.compile_cache)
        with stop_gracefully_on_signals():
            return run_experiment(algo, make_train, config, hparams, options, provenance)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (TrainingDiverged, checkpoint.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        print(f"error: out of memory on {jax.local_devices()[0].platform} ({str(error).splitlines()[0][:200]}); "
              f"the checkpoints written so far are kept; allowed: fewer members (num_seeds, --sweep), a smaller "
              f"num_envs, buffer_size or eval_episodes, or a machine with more memory", file=sys.stderr)
        raise SystemExit(1) from None
    except RunInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print("interrupted at once (a second signal): the checkpoints written so far are kept; continue with "
              "--resume <run folder>", file=sys.stderr)
        raise SystemExit(130) from None


def check_resume_flags(given: tuple, defaults: tuple, saved: tuple, explicit: set[str] = frozenset()) -> None:
    """Refuses flags given beside --resume that contradict the run's saved configuration: those that differ
    from the defaults, and those named on the command line (`explicit`) even where they equal the defaults."""
    conflicts = []
    for given_part, default_part, saved_part in zip(given, defaults, saved):
        for field in dataclasses.fields(given_part):
            value = getattr(given_part, field.name)
            if field.name in ("resume", "run_dir", *HOST_ONLY_OPTIONS) or (
                    value == getattr(default_part, field.name) and field.name not in explicit):
                continue  # not given on the command line
            if value != getattr(saved_part, field.name):
                conflicts.append(f"{field.name}={value!r} (the run has {getattr(saved_part, field.name)!r})")
    if conflicts:
        raise ConfigError(f"resume: these flags differ from the run's config.json: {', '.join(conflicts)}; "
                          f"resume with the run's own settings, or start a new run")
