"""SAC, TD3 and i-SAC (K = 3) on brax at equal environment steps; steps/s side by side with rejax.

Returns (IQM and 95% bootstrap CIs over seeds, learning curves):

    .venv/bin/python benchmarks/bench_offpolicy.py --envs brax/hopper brax/halfcheetah brax/walker2d \
        --seeds 8 --steps 1000000 --out benchmarks/results/offpolicy

Each (algorithm, env) trains all seeds as one vmapped program with the brax
settings below (`--num-envs` envs per seed, `--utd-ratio` gradient steps per
vectorised step, 2x256 ReLU networks, batch 256), then plays `--episodes` greedy
evaluation episodes (1000 steps at most) per seed; a seed's score is their mean
return. `benchmarks/harness.py` runs the comparison (each seed initialised by its
own jitted `init`: see `harness.train_seeds`) and writes `scores.json` (scores,
settings, times), a report per env and learning curves. Results of other envs
already in `scores.json` at the same budget are kept, so envs can be run one
command at a time.

Speed (`--speed`): SAC and TD3 on gymnax Pendulum-v1 with the same settings for
rlzoo and rejax (`benchmarks/peer_offpolicy.py`, run in `.venv-peer` as a
subprocess, one contender after another, never concurrently), vmapped over each
of `--speed-seeds`. Compile is `jax.jit(...).lower(...).compile()`, run the
compiled program to `block_until_ready`, best of 2 calls; the ratio is ours over
rejax's run time (below 1: rlzoo is faster). Writes `speed.json` into `--out`.

    .venv/bin/python benchmarks/bench_offpolicy.py --speed --speed-seeds 1 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from rlzoo.benchmarks.harness import Contender, compare, machine

from rlzoo.algorithms import isac, sac, td3
from rlzoo.sweep import seed_keys

HERE = Path(__file__).resolve().parent
PEER_PYTHON = HERE.parent / ".venv-peer" / "bin" / "python"
ALGORITHMS = {"SAC": sac, "TD3": td3, "i-SAC K=3": isac}


def contenders(env_id: str, steps: int, num_envs: int, utd_ratio: int, learning_starts: int,
               names: list[str]) -> dict[str, Contender]:
    """The chosen algorithms with the shared brax settings."""
    common = dict(env_id=env_id, total_timesteps=steps, num_envs=num_envs, utd_ratio=utd_ratio,
                  learning_starts=learning_starts, buffer_size=min(1_000_000, max(steps, 100_000)),
                  batch_size=256, hidden_sizes=(256, 256), activation="relu")
    configs = {"SAC": sac.Config(**common), "TD3": td3.Config(**common), "i-SAC K=3": isac.Config(num_heads=3, **common)}
    return {name: Contender(ALGORITHMS[name].make_train, configs[name], ALGORITHMS[name].HParams()) for name in names}


def bench_returns(args) -> None:
    compare({env_id: contenders(env_id, args.steps, args.num_envs, args.utd_ratio, args.learning_starts, args.algos)
             for env_id in args.envs}, args.seeds, args.out, budget={"steps": args.steps}, eval_episodes=args.episodes,
            per_seed_init=True)


# --------------------------------------------------------------------------- speed


SPEED = dict(env_id="Pendulum-v1", num_envs=4, utd_ratio=1, batch_size=256, buffer_size=100_000,
             learning_starts=2_000, hidden_sizes=(256, 256), activation="relu")
"""The matched settings of the speed comparison (rejax gets the same through peer_offpolicy.py's flags)."""


def time_ours(name: str, total_timesteps: int, num_seeds: int, repeats: int) -> dict:
    """Compile, then the best of `repeats` runs of `vmap(train)` over the seeds (init included, as in rejax)."""
    module = ALGORITHMS[name]
    config = module.Config(total_timesteps=total_timesteps, **SPEED)
    hparams = sac.HParams(critic_lr=3e-4, alpha_lr=3e-4) if name == "SAC" else td3.HParams()  # rejax: one lr
    train = module.make_train(config)
    keys = seed_keys(0, num_seeds)
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(lambda key: train(key, hparams))).lower(keys).compile()
    compile_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, metrics = jax.block_until_ready(compiled(keys))
        runs.append(time.perf_counter() - start)
    env_steps = num_seeds * config.num_updates * config.num_envs
    return {"contender": "rlzoo", "algo": name, "num_seeds": num_seeds, "env_steps": env_steps,
            "compile_s": round(compile_s, 3), "run_s": round(min(runs), 3),
            "steps_per_s": round(env_steps / min(runs), 1),
            "final_return": round(float(np.nanmean(np.asarray(metrics["episode_return"][:, -1]))), 2)}


def time_rejax(name: str, total_timesteps: int, num_seeds: int) -> dict | None:
    if not PEER_PYTHON.exists():
        print(f"[bench] {PEER_PYTHON} is missing (run `make bench-peer`); skipping rejax", file=sys.stderr)
        return None
    command = [str(PEER_PYTHON), str(HERE / "peer_offpolicy.py"), "--algo", name.lower(),
               "--num-seeds", str(num_seeds), "--total-timesteps", str(total_timesteps),
               "--env-id", SPEED["env_id"], "--num-envs", str(SPEED["num_envs"]),
               "--utd-ratio", str(SPEED["utd_ratio"]), "--batch-size", str(SPEED["batch_size"]),
               "--buffer-size", str(SPEED["buffer_size"]), "--learning-starts", str(SPEED["learning_starts"]),
               "--hidden-sizes", *map(str, SPEED["hidden_sizes"])]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        print(f"[bench] rejax {name} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    warm = result.get("run_s_warm")
    return {"contender": "rejax", "algo": name, "num_seeds": num_seeds, "env_steps": result["env_steps"],
            "compile_s": result["compile_s"], "run_s": min(result["run_s"], warm) if warm else result["run_s"],
            "steps_per_s": result["steps_per_s"], "final_return": result["final_return"],
            "versions": {k: result[k] for k in ("rejax", "gymnax", "jax")}}


def bench_speed(args) -> None:
    rows = []
    for num_seeds in args.speed_seeds:
        for name in ("SAC", "TD3"):
            for row in (time_ours(name, args.speed_steps, num_seeds, 2), time_rejax(name, args.speed_steps, num_seeds)):
                if row is not None:
                    rows.append(row)
                    print(f"[bench] {row}", file=sys.stderr, flush=True)
    print("| algo | seeds | contender | compile s | run s | env steps/s | rlzoo run ÷ this | rlzoo compile ÷ this "
          "| final return |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ours = next(r for r in rows if r["contender"] == "rlzoo" and r["algo"] == row["algo"]
                    and r["num_seeds"] == row["num_seeds"])
        row["rlzoo_run_over_this"] = round(ours["run_s"] / row["run_s"], 3)
        row["rlzoo_compile_over_this"] = round(ours["compile_s"] / row["compile_s"], 3)
        print(f"| {row['algo']} | {row['num_seeds']} | {row['contender']} | {row['compile_s']:.2f} | "
              f"{row['run_s']:.2f} | {row['steps_per_s']:,.0f} | {row['rlzoo_run_over_this']:.2f} | "
              f"{row['rlzoo_compile_over_this']:.2f} | {row['final_return']} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps({
        "settings": {**SPEED, "total_timesteps_per_seed": args.speed_steps, "lr": 3e-4, "gamma": 0.99, "tau": 0.005},
        "machine": machine(), "jax": jax.__version__, "rows": rows}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["brax/hopper", "brax/halfcheetah", "brax/walker2d"])
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--num-envs", type=int, default=16, help="brax envs per seed")
    parser.add_argument("--utd-ratio", type=int, default=2, help="gradient steps per vectorised step")
    parser.add_argument("--learning-starts", type=int, default=5_000, help="env steps of random actions first")
    parser.add_argument("--episodes", type=int, default=10, help="greedy evaluation episodes per seed")
    parser.add_argument("--out", default=str(HERE / "results" / "offpolicy"))
    parser.add_argument("--speed", action="store_true", help="run the rlzoo-vs-rejax speed comparison instead")
    parser.add_argument("--speed-seeds", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--speed-steps", type=int, default=20_000, help="env steps per seed in the speed comparison")
    args = parser.parse_args()
    bench_speed(args) if args.speed else bench_returns(args)


if __name__ == "__main__":
    main()
