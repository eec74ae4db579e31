"""Evaluation episodes on separate environments, as one jittable function.

`evaluate(act, env, key, num_episodes, max_steps)` runs `num_episodes` fresh
copies of a single-environment `Env` in parallel until each has finished its
first episode (or `max_steps` passed) and returns the undiscounted return and
length of each. `act(key, obs) -> action` is the policy (greedy or stochastic,
the algorithm decides); it sees raw observations, so an algorithm that
normalises observations applies its frozen training statistics inside `act`.
Evaluation draws from its own keys, so it never changes the training stream.

`greedy_member_returns(trainer, states, key)` scores every member of a sweep
(seeds × hyperparameters) by its greedy policy's mean return, as the benchmarks do.

Not here: aggregate statistics over runs (`rlzoo.report`), or when to evaluate
(`rlzoo.experiment`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.env_adapter import Env, VecEnv


class EvalResult(NamedTuple):
    episode_return: jax.Array  # [num_episodes]
    episode_length: jax.Array  # [num_episodes]


def evaluate(act: Callable[[jax.Array, jax.Array], jax.Array], env: Env, key: jax.Array, num_episodes: int,
             max_steps: int) -> EvalResult:
    """Returns and lengths of the first episode of `num_episodes` parallel copies of `env`."""
    vec_env = VecEnv(env, num_episodes, clip_actions=True)
    reset_key, run_key = jax.random.split(key)
    env_state, obs = vec_env.reset(reset_key)
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    unfinished = jnp.ones((num_episodes,), jnp.bool_)

    def step(carry, key):
        env_state, obs, returns, lengths, running = carry
        act_key, env_key = jax.random.split(key)
        env_state, ts = vec_env.step(env_key, env_state, act(act_key, obs))
        returns = returns + jnp.where(running, ts.reward, 0.0)
        lengths = lengths + running
        running = running & ~(ts.terminated | ts.truncated)
        return (env_state, ts.obs, returns, lengths, running), None

    init = (env_state, obs, zeros, zeros.astype(jnp.int32), unfinished)
    (_, _, returns, lengths, _), _ = jax.lax.scan(step, init, jax.random.split(run_key, max_steps))
    return EvalResult(returns, lengths)


def greedy_member_returns(trainer: Any, states: Any, key: jax.Array, num_episodes: int = 10) -> np.ndarray:
    """Per member (leading axis of `states`), the mean return of `num_episodes` greedy episodes.

    Plays `trainer.act(member_state, key, obs, greedy=True)` on fresh copies of
    `trainer.eval_env` for at most its `max_episode_steps` (1000 if unset); member m
    uses `jax.random.split(key, M)[m]`. The benchmarks' score per seed.
    """
    max_steps = trainer.eval_env.spec.max_episode_steps or 1000
    num_members = jax.tree.leaves(states)[0].shape[0]

    def member_return(member_state: Any, member_key: jax.Array) -> jax.Array:
        policy = lambda k, obs: trainer.act(member_state, k, obs, True)  # noqa: E731
        return evaluate(policy, trainer.eval_env, member_key, num_episodes, max_steps).episode_return.mean()

    return np.asarray(jax.jit(jax.vmap(member_return))(states, jax.random.split(key, num_members)))
