"""Raw env steps/s per environment package on this machine: uniformly random legal actions (continuous:
uniform within the bounds) in `--num-envs` envs for `--steps` steps, one jitted scan through `VecEnv`
(auto-reset, episode statistics, masks included), best of 3 calls after compiling, each going on from the
state the call before left (the reset is not timed: a host env's reset opens its envs).

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
           "xminigrid/MiniGrid-Empty-5x5", "jumanji/Game2048-v1", "jumanji/Snake-v1", "pgx/2048",
           "playground/CartpoleBalance")
HOST_ENV_IDS = ("gymnasium/CartPole-v1", "atari/Breakout")  # rlzoo.host_envs: stepped on the host, CPU tier only


def random_legal_steps(vec_env: VecEnv, steps: int):
    """A jittable function of (state, key): `steps` steps of uniformly random legal actions; the final state and
    the rewards stacked."""

    def run(state, key):
        def step(state, key):
            spec = vec_env.spec
            if spec.discrete:
                mask = vec_env.action_mask(state)
                logits = jnp.zeros((vec_env.num_envs, spec.num_actions))
                if mask is not None:
                    logits = jnp.where(mask, logits, -jnp.inf)
                action = jax.random.categorical(key, logits)
            else:
                action = jax.random.uniform(key, (vec_env.num_envs, spec.num_actions), minval=spec.action_low,
                                            maxval=spec.action_high)
            state, ts = vec_env.step(key, state, action)
            return state, ts.reward

        return jax.lax.scan(step, state, jax.random.split(key, steps))

    return run


def steps_per_second(env_id: str, num_envs: int, steps: int, repeats: int = 3) -> float:
    vec_env = VecEnv(make_env(env_id), num_envs)
    state, _ = jax.jit(vec_env.reset)(jax.random.PRNGKey(0))
    compiled = jax.jit(random_legal_steps(vec_env, steps)).lower(state, jax.random.PRNGKey(0)).compile()
    state, rewards = compiled(state, jax.random.PRNGKey(0))
    jax.block_until_ready(rewards)
    best = float("inf")
    for i in range(repeats):
        start = time.perf_counter()
        state, rewards = compiled(state, jax.random.PRNGKey(i + 1))
        jax.block_until_ready(rewards)
        best = min(best, time.perf_counter() - start)
    return num_envs * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--env-ids", nargs="*", default=[*ENV_IDS, *HOST_ENV_IDS])
    args = parser.parse_args()
    print("| env id | raw env steps/s |\n|---|---|")
    for env_id in args.env_ids:
        print(f"| `{env_id}` | {steps_per_second(env_id, args.num_envs, args.steps):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
