"""PPO-S5 vs PPO-GRU: training wall time at several rollout lengths, and final returns on memory tasks.

    .venv/bin/python benchmarks/bench_s5.py --part speed --lengths 128 1024 4096
    .venv/bin/python benchmarks/bench_s5.py --part returns --seeds 8 --steps 1000000

Speed: one PPO update (rollout of `num_envs` x T steps, then `num_epochs` x
`num_minibatches` passes over whole sequences) for each sequence model, the same
settings otherwise, timed side by side in one process on one machine. Compile is
timed separately (`jit(...).lower(...).compile()`); run time is the best of
`--repeats` timed updates (compiled ahead of time, so no call compiles). The
ratio GRU ÷ S5 above 1 means S5 trains faster. Settings follow Lu et al.'s
reference PPO (64 envs, 8 minibatches of whole sequences) with 10 epochs instead
of 30 and smaller models, to fit a CPU: S5 with 2 layers of width 64 and 64
states, GRU with 64 units.

Returns: each (task, model) trains `--seeds` seeds as one vmapped program and
reports the mean of each env's last finished training episode, per seed.

Writes `benchmarks/results/s5/speed.json` and/or `returns.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from rlzoo.algorithms.ppo_s5 import Config, HParams, make_train
from rlzoo.sweep import seed_keys

MODELS = {"s5": dict(sequence_model="s5", d_model=64, state_size=64, num_layers=2),
          "gru": dict(sequence_model="gru", d_model=64)}
SPEED = dict(env_id="RepeatPrevious-Easy", num_envs=64, num_epochs=10, num_minibatches=8)


def time_update(config: Config, repeats: int) -> dict[str, float]:
    trainer = make_train(config)
    hparams = HParams()
    start = time.perf_counter()
    init = jax.jit(trainer.init).lower(jax.random.PRNGKey(0), hparams).compile()
    update = jax.jit(trainer.update).lower(init(jax.random.PRNGKey(0), hparams), hparams).compile()
    compile_s = time.perf_counter() - start
    state = jax.block_until_ready(init(jax.random.PRNGKey(0), hparams))
    runs = []  # compiled ahead of time: the first call runs, it does not compile
    for _ in range(repeats):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(update(state, hparams))
        runs.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "update_s": min(runs), "updates_timed": repeats,
            "env_steps_per_s": config.num_envs * config.num_steps / min(runs)}


def speed(lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        row = {"rollout_length": length}
        for name, model in MODELS.items():
            config = Config(num_steps=length, total_timesteps=SPEED["num_envs"] * length, **SPEED, **model)
            row[name] = time_update(config, repeats)
            print(f"T={length} {name}: {row[name]}", flush=True)
        row["gru_over_s5_update_time"] = row["gru"]["update_s"] / row["s5"]["update_s"]
        print(f"T={length}: GRU / S5 update time = {row['gru_over_s5_update_time']:.2f}", flush=True)
        rows.append(row)
    return rows


RETURN_TASKS = {
    "RepeatPrevious-Easy": HParams(lr=3e-3, gamma=0.5, gae_lambda=0.9),
    "StatelessCartPole-Easy": HParams(lr=3e-3),
}
RETURN_MODEL = dict(num_layers=1, d_model=32, state_size=32, num_envs=32, num_steps=128, num_minibatches=4)


def returns(tasks: list[str], models: list[str], seeds: int, steps: int) -> list[dict]:
    rows = []
    for env_id in tasks:
        for model in models:
            config = Config(env_id=env_id, total_timesteps=steps, sequence_model=model, **RETURN_MODEL)
            start = time.perf_counter()
            _, metrics = jax.jit(jax.vmap(make_train(config), in_axes=(0, None)))(
                seed_keys(0, seeds), RETURN_TASKS[env_id])
            final = np.asarray(metrics["episode_return"][:, -1], np.float64)
            rows.append({"env_id": env_id, "sequence_model": model, "env_steps": steps, "seeds": seeds,
                         "final_return_per_seed": final.tolist(), "mean": float(final.mean()),
                         "min": float(final.min()), "wall_s": time.perf_counter() - start})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "returns", "all"], default="all")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=list(RETURN_TASKS))
    parser.add_argument("--models", nargs="+", default=["s5", "gru", "none"])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/s5"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
               "load_average_at_start": os.getloadavg()}
    if args.part in ("speed", "all"):
        rows = speed(args.lengths, args.repeats)
        payload = {"machine": machine, "settings": {**SPEED, "models": MODELS}, "results": rows}
        (args.out / "speed.json").write_text(json.dumps(payload, indent=2))
    if args.part in ("returns", "all"):
        rows = returns(args.tasks, args.models, args.seeds, args.steps)
        payload = {"machine": machine, "settings": {"model": RETURN_MODEL, "hparams": {
            k: {f: float(getattr(v, f)) for f in ("lr", "gamma", "gae_lambda")} for k, v in RETURN_TASKS.items()}},
            "results": rows}
        (args.out / "returns.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
