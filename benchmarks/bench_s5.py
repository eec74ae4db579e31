"""PPO-S5 vs PPO-GRU: training wall time at several rollout lengths, and final returns on memory tasks.

    .venv/bin/python benchmarks/bench_s5.py --part speed --sizes small reference --lengths 128 1024 4096 \
        --reference-one-epoch-from 4096
    .venv/bin/python benchmarks/bench_s5.py --part speed --sizes small --lengths 1024 \
        --speed-models s5 s5-associative gru --speed-file speed_scans.json
    .venv/bin/python benchmarks/bench_s5.py --part speed --sizes test small --lengths 1024 \
        --speed-models s5 gru none --speed-file speed_memoryless.json
    .venv/bin/python benchmarks/bench_s5.py --part speed --sizes one-block --lengths 1024 --speed-file speed_one_block.json
    .venv/bin/python benchmarks/bench_s5.py --part returns --seeds 8 --steps 1000000

Speed: one PPO update (rollout of `num_envs` x T steps, then `num_epochs` x
`num_minibatches` passes over whole sequences) for each sequence model, the same
settings otherwise, timed side by side in one process on one machine. Compile is
timed separately (`jit(...).lower(...).compile()`). All models of one (size, T)
are compiled first, then timed in `--repeats` interleaved rounds (one update of
each per round) and each keeps its fastest update, so a change in the machine's
load hits every model alike. The ratio GRU ÷ S5 above 1 means S5 trains faster.
Settings follow Lu et al.'s reference PPO (64 envs, 8 minibatches of whole
sequences) with 10 epochs instead of 30. Model sizes (`SIZES`): "small", S5 with
2 blocks of width 64 and 64 states vs a 64-unit GRU; "reference", Lu et al.'s
S5 with 4 blocks of width 256 and 256 states vs their 256-unit GRU;
"one-block", the reference width with one S5 block; "test", the 1 block of
width 32 with 32 states (vs a 32-unit GRU) that the tests and the returns below
train. The model "none" (memoryless, the GRU's width) times everything in an
update except the memory. `--reference-one-epoch-from T` times reference sizes
at rollout lengths >= T with 1 epoch instead of `--epochs` (CPU time); the rows
say which.
S5 runs with `scan="auto"` (sequential on CPU) unless the model is "s5-associative".

Returns: each (task, model) trains `--seeds` seeds as one vmapped program and
reports the mean of each env's last finished training episode, per seed (on
meta/CartPole-v1 an episode is a meta-episode of 4 trials, at most 2,000); on
meta tasks also each trial's mean return over 16 greedy meta-episodes per seed.
`returns.json` is `benchmarks/harness.py`'s results file (label: the model; task:
the env; `details` holds each pair's steps and wall time); other pairs already in
it are kept.

Writes `benchmarks/results/s5/speed.json` and/or `returns.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from rlzoo.benchmarks.harness import ResultsFile, score_table

from rlzoo.algorithms.ppo_s5 import Config, HParams, make_train
from rlzoo.envs.meta import trial_done_flag, trial_returns
from rlzoo.evaluate import evaluate_policy_of
from rlzoo.sweep import seed_keys

SIZES = {
    "small": {"s5": dict(sequence_model="s5", d_model=64, state_size=64, num_layers=2),
              "gru": dict(sequence_model="gru", d_model=64)},
    "reference": {"s5": dict(sequence_model="s5", d_model=256, state_size=256, num_layers=4),
                  "gru": dict(sequence_model="gru", d_model=256)},
    "one-block": {"s5": dict(sequence_model="s5", d_model=256, state_size=256, num_layers=1),
                  "gru": dict(sequence_model="gru", d_model=256)},
    "test": {"s5": dict(sequence_model="s5", d_model=32, state_size=32, num_layers=1),
             "gru": dict(sequence_model="gru", d_model=32)},
}
SPEED = dict(env_id="RepeatPrevious-Easy", num_envs=64, num_minibatches=8)


def model_settings(size: str, model: str) -> dict:
    """The Config fields of `model` ("s5", "s5-associative", "gru" or "none") at `size`.

    "none" is the memoryless agent with the GRU's width: everything in an update but the memory.
    """
    if model == "s5-associative":
        return {**SIZES[size]["s5"], "scan": "associative"}
    if model == "none":
        return {**SIZES[size]["gru"], "sequence_model": "none"}
    return SIZES[size][model]


def compile_update(config: Config) -> tuple[Any, Any, float]:
    """(compiled update, initial state, compile seconds); compiled ahead of time, so no timed call compiles."""
    trainer = make_train(config)
    hparams = HParams()
    start = time.perf_counter()
    init = jax.jit(trainer.init).lower(jax.random.PRNGKey(0), hparams).compile()
    update = jax.jit(trainer.update).lower(init(jax.random.PRNGKey(0), hparams), hparams).compile()
    compile_s = time.perf_counter() - start
    return update, jax.block_until_ready(init(jax.random.PRNGKey(0), hparams)), compile_s


def time_updates(configs: dict[str, Config], repeats: int) -> dict[str, dict[str, float]]:
    """Best update time of each config over `repeats` interleaved rounds (one update of each per round)."""
    compiled = {name: compile_update(config) for name, config in configs.items()}
    states = {name: state for name, (_, state, _) in compiled.items()}
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (update, _, _) in compiled.items():
            start = time.perf_counter()
            states[name], _ = jax.block_until_ready(update(states[name], HParams()))
            runs[name].append(time.perf_counter() - start)
    return {name: {"compile_s": compiled[name][2], "update_s": min(runs[name]), "update_s_all": runs[name],
                   "updates_timed": repeats, "num_epochs": configs[name].num_epochs,
                   "env_steps_per_s": configs[name].num_envs * configs[name].num_steps / min(runs[name])}
            for name in configs}


def speed(sizes: list[str], lengths: list[int], models: list[str], epochs: int, repeats: int,
          reference_one_epoch_from: int | None) -> list[dict]:
    rows = []
    for size in sizes:
        for length in lengths:
            one_epoch = size == "reference" and reference_one_epoch_from is not None \
                and length >= reference_one_epoch_from
            num_epochs = 1 if one_epoch else epochs
            configs = {model: Config(num_steps=length, total_timesteps=SPEED["num_envs"] * length,
                                     num_epochs=num_epochs, **SPEED, **model_settings(size, model))
                       for model in models}
            row = {"size": size, "rollout_length": length, "num_epochs": num_epochs,
                   **time_updates(configs, repeats)}
            for model in models:
                print(f"{size} T={length} epochs={num_epochs} {model}: {row[model]}", flush=True)
                if model not in ("gru", "none") and "gru" in row:
                    row[f"gru_over_{model}_update_time"] = row["gru"]["update_s"] / row[model]["update_s"]
                    print(f"{size} T={length}: GRU / {model} update time = "
                          f"{row[f'gru_over_{model}_update_time']:.2f}", flush=True)
            rows.append(row)
    return rows


CARD_TASK = HParams(lr=3e-3, gamma=0.5, gae_lambda=0.9)  # an answer's reward is immediate: short horizon
RETURN_TASKS = {
    "RepeatPrevious-Easy": CARD_TASK,
    "StatelessCartPole-Easy": HParams(lr=3e-3),
    "meta/CartPole-v1": HParams(lr=3e-3),  # 4 trials per meta-episode under a random observation projection
    "RepeatFirst-Easy": CARD_TASK,
    "CountRecall-Easy": CARD_TASK,
    "Autoencode-Easy": CARD_TASK,
    "NoisyStatelessCartPole-Easy": HParams(lr=3e-3),
    "StatelessPendulum-Easy": HParams(lr=3e-3),
    "RepeatPrevious-Medium": CARD_TASK,
    "StatelessCartPole-Medium": HParams(lr=3e-3),
    "RepeatPrevious-Hard": CARD_TASK,
    "StatelessCartPole-Hard": HParams(lr=3e-3),
}
RETURN_MODEL = dict(num_layers=1, d_model=32, state_size=32, num_envs=32, num_steps=128, num_minibatches=4)


TRIAL_EPISODES = 16  # greedy meta-episodes per seed for the per-trial returns


def greedy_trial_returns(trainer: Any, states: Any, num_episodes: int) -> np.ndarray:
    """[seeds, trials]: mean return of each trial of `num_episodes` greedy meta-episodes per seed."""
    num_trials = trainer.eval_env.num_trials

    def one_seed(state: Any, key: jax.Array) -> jax.Array:
        record = lambda ts: (ts.reward, trial_done_flag(ts.final_obs))  # noqa: E731
        rewards, done = evaluate_policy_of(trainer, state, key, num_episodes, True, record).trace
        return trial_returns(rewards, done, num_trials).mean(0)

    num_seeds = jax.tree.leaves(states)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(2024), num_seeds)
    return np.asarray(jax.jit(jax.vmap(one_seed))(states, keys), np.float64)


def returns(tasks: list[str], models: list[str], seeds: int, steps: int, results: ResultsFile) -> None:
    """Trains every (task, model) and records it in `results` at once (other pairs already there are kept)."""
    for env_id in tasks:
        for model in models:
            config = Config(env_id=env_id, total_timesteps=steps, sequence_model=model, **RETURN_MODEL)
            trainer = make_train(config)
            start = time.perf_counter()
            states, metrics = jax.jit(jax.vmap(trainer, in_axes=(0, None)))(seed_keys(0, seeds), RETURN_TASKS[env_id])
            final = np.asarray(metrics["episode_return"][:, -1], np.float64)
            details = {"env_steps": steps, "mean": float(final.mean()), "min": float(final.min()),
                       "wall_s": time.perf_counter() - start}
            if env_id.startswith("meta/"):
                per_trial = greedy_trial_returns(trainer, states, TRIAL_EPISODES)
                details["greedy_trial_returns_per_seed"] = np.round(per_trial, 2).tolist()
                details["greedy_trial_returns_mean"] = np.round(per_trial.mean(0), 2).tolist()
            print(env_id, model, final.tolist(), details, flush=True)
            results.record(model, env_id, scores=final.tolist(), details=details)


def returns_table(results: ResultsFile) -> str:
    """Markdown: one row per task, IQM [95% CI] over seeds of each model's final return (`rlzoo.stats`)."""
    data = results.read()
    row_names = {task: f"{task} ({details['env_steps']:.0e} steps)" for per_task in data.get("details", {}).values()
                 for task, details in per_task.items()}
    return score_table(data.get("scores", {}), f"task ({data.get('seeds')} seeds)", 2, row_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "returns", "all", "table"], default="all",
                        help="table: print the IQM [95%% CI] table of returns.json, run nothing")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small", "reference"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--speed-models", nargs="+", choices=["s5", "s5-associative", "gru", "none"], default=["s5", "gru"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--reference-one-epoch-from", type=int, default=None,
                        help="time reference sizes at rollout lengths >= this with 1 epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--speed-file", default="speed.json")
    parser.add_argument("--tasks", nargs="+", default=list(RETURN_TASKS))
    parser.add_argument("--models", nargs="+", default=["s5", "gru", "none"])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/s5"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "table":
        print(returns_table(ResultsFile(args.out / "returns.json", {"seeds": args.seeds})))
        return
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
               "load_average_at_start": os.getloadavg()}
    if args.part in ("speed", "all"):
        rows = speed(args.sizes, args.lengths, args.speed_models, args.epochs, args.repeats,
                     args.reference_one_epoch_from)
        payload = {"machine": machine, "settings": {**SPEED, "num_epochs": args.epochs, "sizes": SIZES,
                                                    "reference_one_epoch_from": args.reference_one_epoch_from},
                   "results": rows}
        (args.out / args.speed_file).write_text(json.dumps(payload, indent=2))
    if args.part in ("returns", "all"):
        results = ResultsFile(args.out / "returns.json", {"seeds": args.seeds})
        results.update(settings={"model": RETURN_MODEL, "hparams": {
            task: {f: float(getattr(hp, f)) for f in ("lr", "gamma", "gae_lambda")} for task, hp in RETURN_TASKS.items()}})
        returns(args.tasks, args.models, args.seeds, args.steps, results)

if __name__ == "__main__":
    main()
