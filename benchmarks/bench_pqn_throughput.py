"""PQN against DQN: environment steps per second at equal env steps on Breakout-MinAtar, one process, 1 seed.

    .venv/bin/python benchmarks/bench_pqn_throughput.py

PQN with purejaxql's MinAtar settings (`bench.PQN_MINATAR`); DQN with its defaults.
Each program is compiled, then run twice (best kept); PQN is timed before and after DQN, and the slower PQN
time is the one compared.
"""
from __future__ import annotations

import json
import time

import jax

from rlzoo.algorithms import dqn, pqn
from rlzoo.benchmarks.bench import PQN_MINATAR
from rlzoo.sweep import seed_keys

STEPS = 200_704  # a multiple of PQN's 128 x 32 steps per update and of DQN's 10 envs


def time_trainer(trainer, hparams, repeats: int = 2) -> dict:
    """Compile time and the best of `repeats` runs of 1 seed, hyperparameters as an input (as the CLI runs them)."""
    keys = seed_keys(0, 1)
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(trainer, in_axes=(0, None))).lower(keys, hparams).compile()
    compile_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, metrics = jax.block_until_ready(compiled(keys, hparams))
        runs.append(time.perf_counter() - start)
    env_steps = float(metrics["env_steps"][0, -1])
    return {"compile_s": compile_s, "run_s": min(runs), "env_steps": env_steps, "steps_per_s": env_steps / min(runs)}


def main() -> None:
    pqn_trainer = pqn.make_train(pqn.Config(env_id="Breakout-MinAtar", total_timesteps=STEPS, **PQN_MINATAR["config"]))
    pqn_hparams = pqn.HParams(**PQN_MINATAR["hparams"])
    dqn_trainer = dqn.make_train(dqn.Config(env_id="Breakout-MinAtar", total_timesteps=STEPS))
    results = {}
    for name, trainer, hparams in (("pqn", pqn_trainer, pqn_hparams), ("dqn", dqn_trainer, dqn.HParams()),
                                   ("pqn_again", pqn_trainer, pqn_hparams)):
        results[name] = time_trainer(trainer, hparams)
        print(name, json.dumps(results[name]), flush=True)
    slower_pqn = min(results["pqn"]["steps_per_s"], results["pqn_again"]["steps_per_s"])
    print(f"PQN / DQN env steps per second: {slower_pqn / results['dqn']['steps_per_s']:.1f}")


if __name__ == "__main__":
    main()
