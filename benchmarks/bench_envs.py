"""Raw env steps/s per environment package on this machine: uniformly random legal actions in `--num-envs`
envs for `--steps` steps, one jitted scan through `VecEnv` (auto-reset, episode statistics, masks included),
best of 3 calls after compiling.

    .venv/bin/python benchmarks/bench_envs.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from rlzoo.env_adapter import VecEnv
from rlzoo.envs import make_env

ENV_IDS = ("CartPole-v1", "Breakout-MinAtar", "craftax/Craftax-Classic-Symbolic-v1", "navix/Navix-Empty-5x5-v0",
           "xminigrid/MiniGrid-Empty-5x5", "jumanji/Game2048-v1", "jumanji/Snake-v1", "pgx/2048")


def random_legal_steps(vec_env: VecEnv, steps: int):
    """A jittable function of a key: `steps` steps of uniformly random legal actions, the rewards stacked."""

    def run(key):
        state, _ = vec_env.reset(key)

        def step(state, key):
            mask = vec_env.action_mask(state)
            logits = jnp.zeros((vec_env.num_envs, vec_env.spec.num_actions))
            if mask is not None:
                logits = jnp.where(mask, logits, -jnp.inf)
            state, ts = vec_env.step(key, state, jax.random.categorical(key, logits))
            return state, ts.reward

        return jax.lax.scan(step, state, jax.random.split(key, steps))[1]

    return run


def steps_per_second(env_id: str, num_envs: int, steps: int, repeats: int = 3) -> float:
    program = jax.jit(random_legal_steps(VecEnv(make_env(env_id), num_envs), steps))
    compiled = program.lower(jax.random.PRNGKey(0)).compile()
    jax.block_until_ready(compiled(jax.random.PRNGKey(0)))
    best = float("inf")
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.PRNGKey(i + 1)))
        best = min(best, time.perf_counter() - start)
    return num_envs * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--env-ids", nargs="*", default=list(ENV_IDS))
    args = parser.parse_args()
    print("| env id | raw env steps/s |\n|---|---|")
    for env_id in args.env_ids:
        print(f"| `{env_id}` | {steps_per_second(env_id, args.num_envs, args.steps):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
