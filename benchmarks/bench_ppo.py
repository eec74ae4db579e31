"""PPO on CartPole-v1, side by side in one run: rlzoo vs raw env stepping vs peers.

    make bench                                   # creates .venv-peer for the peers, then runs this
    .venv/bin/python benchmarks/bench_ppo.py --seeds 1 16 --purejaxrl-dir /tmp/purejaxrl

Every contender trains (or steps) PureJaxRL's CartPole-v1 configuration: 4 envs,
128 steps per rollout, 5e5 total steps, 4 epochs x 4 minibatches, vmapped over
N seeds. For each we time compile (`jit(...).lower(...).compile()`) and run (the
compiled program, `block_until_ready`) separately; run is the best of
`--repeats` calls. "raw env stepping" is a `lax.scan` of `VecEnv.step` with
uniformly random actions for the same number of steps: the floor that any PPO
pays for the environment. Peers run in their own virtual environment
(`.venv-peer`, gymnax 0.0.x) through `benchmarks/peer_ppo.py`, one after another
on the same machine, never concurrently. Ratios are ours / theirs: below 1 is
faster. Results print as a markdown table and go to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from rlzoo.algorithms.ppo import Config, HParams, make_train
from rlzoo.env_adapter import VecEnv
from rlzoo.envs import make_env
from rlzoo.sweep import seed_keys

HERE = Path(__file__).resolve().parent
PEER_PYTHON = HERE.parent / ".venv-peer" / "bin" / "python"


def time_program(fn, keys, repeats: int) -> dict:
    """Compile time, then the best run time of `repeats` calls of the compiled program."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(keys).compile()
    compile_s = time.perf_counter() - start
    runs, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = jax.block_until_ready(compiled(keys))
        runs.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "run_s": min(runs), "output": output}


def bench_rlzoo(config: Config, num_seeds: int, repeats: int) -> dict:
    train = make_train(config)
    result = time_program(jax.vmap(lambda key: train(key, HParams())), seed_keys(0, num_seeds), repeats)
    metrics = result.pop("output")[1]
    result["final_return"] = float(np.nanmean(np.asarray(metrics["episode_return"][:, -1])))
    return result


def bench_raw_stepping(config: Config, num_seeds: int, repeats: int) -> dict:
    """Uniform random actions through `VecEnv.step` for the same env steps: no network, no learning."""
    vec_env = VecEnv(make_env(config.env_id), config.num_envs)
    num_steps = (config.total_timesteps // config.num_envs)

    def rollout(key):
        state, _ = vec_env.reset(key)

        def step(state, key):
            action_key, env_key = jax.random.split(key)
            action = jax.random.randint(action_key, (config.num_envs,), 0, vec_env.spec.num_actions)
            state, ts = vec_env.step(env_key, state, action)
            return state, ts.reward.sum()

        return jax.lax.scan(step, state, jax.random.split(key, num_steps))[1].sum()

    result = time_program(jax.vmap(rollout), seed_keys(0, num_seeds), repeats)
    result.pop("output")
    return result


def bench_peer(peer: str, num_seeds: int, total_timesteps: int, purejaxrl_dir: str | None) -> dict | None:
    if not PEER_PYTHON.exists():
        print(f"[bench] {PEER_PYTHON} is missing (run `make bench-peer`); skipping {peer}", file=sys.stderr)
        return None
    if peer == "purejaxrl" and not purejaxrl_dir:
        print("[bench] no --purejaxrl-dir given; skipping purejaxrl", file=sys.stderr)
        return None
    command = [str(PEER_PYTHON), str(HERE / "peer_ppo.py"), "--peer", peer, "--num-seeds", str(num_seeds),
               "--total-timesteps", str(total_timesteps)]
    if peer == "purejaxrl":
        command += ["--purejaxrl-dir", purejaxrl_dir]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        print(f"[bench] {peer} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    warm = result.get("run_s_warm")
    result["run_s"] = min(result["run_s"], warm) if warm else result["run_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peers", nargs="*", default=["rejax", "purejaxrl"])
    parser.add_argument("--purejaxrl-dir", default=None, help="a checkout of PureJaxRL (never vendored here)")
    parser.add_argument("--out", default=str(HERE / "results" / "ppo_cartpole.json"))
    args = parser.parse_args()

    config = Config(total_timesteps=args.total_timesteps)
    rows = []
    for num_seeds in args.seeds:
        contenders = {
            "rlzoo": bench_rlzoo(config, num_seeds, args.repeats),
            "raw env stepping": bench_raw_stepping(config, num_seeds, args.repeats),
        }
        for peer in args.peers:
            contenders[peer] = bench_peer(peer, num_seeds, args.total_timesteps, args.purejaxrl_dir)
        for name, result in contenders.items():
            if result is not None:
                rows.append({"contender": name, "num_seeds": num_seeds,
                             "env_steps": num_seeds * config.num_updates * config.num_envs * config.num_steps,
                             **{k: result.get(k) for k in (
                    "compile_s", "run_s", "final_return")}})
                print(f"[bench] {num_seeds} seed(s) {name}: {rows[-1]}", file=sys.stderr)

    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
                   f"{len(jax.devices())} device(s)",
        "jax": jax.__version__, "rows": rows}, indent=2) + "\n")


def print_table(rows: list[dict]) -> None:
    print("| seeds | contender | compile s | run s | steps/s | rlzoo run ÷ this | rlzoo compile ÷ this | final return |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ours = next(r for r in rows if r["contender"] == "rlzoo" and r["num_seeds"] == row["num_seeds"])
        steps = row["env_steps"] / row["run_s"]
        final = row.get("final_return")
        print(f"| {row['num_seeds']} | {row['contender']} | {row['compile_s']:.2f} | {row['run_s']:.2f} | "
              f"{steps:,.0f} | {ours['run_s'] / row['run_s']:.2f} | {ours['compile_s'] / row['compile_s']:.2f} | "
              f"{'' if final is None else f'{final:.1f}'} |")


if __name__ == "__main__":
    main()
