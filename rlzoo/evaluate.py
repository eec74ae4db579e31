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
(`rlzoo.runner`).
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
    trace: Any = None  # record(timestep) of every step, stacked: [max_steps, num_episodes, ...] leaves


def evaluate(act: Callable[..., Any], env: Env, key: jax.Array, num_episodes: int, max_steps: int,
             initial_carry: Any = None, record: Callable[[Any], Any] | None = None) -> EvalResult:
    """Returns and lengths of the first episode of `num_episodes` parallel copies of `env`.

    `act(key, obs) -> action` (`act(key, obs, mask=legal_actions)` on an env with an action mask); for a
    recurrent agent, pass `initial_carry` (its hidden state for `num_episodes` envs at an episode start) and
    `act(key, obs, carry) -> (action, carry)`. `record(timestep)`, if given, is kept
    for every step (also after an env's first episode; mask with the lengths) as `trace`.
    """
    vec_env = VecEnv(env, num_episodes, clip_actions=True)
    reset_key, run_key = jax.random.split(key)
    env_state, obs = vec_env.reset(reset_key)
    zeros = jnp.zeros((num_episodes,), jnp.float32)
    unfinished = jnp.ones((num_episodes,), jnp.bool_)

    def step(carry, key):
        env_state, obs, returns, lengths, running, agent_carry = carry
        act_key, env_key = jax.random.split(key)
        if initial_carry is None:
            mask = vec_env.action_mask(env_state)
            action = act(act_key, obs) if mask is None else act(act_key, obs, mask=mask)
        else:
            action, agent_carry = act(act_key, obs, agent_carry)
        env_state, ts = vec_env.step(env_key, env_state, action)
        returns = returns + jnp.where(running, ts.reward, 0.0)
        lengths = lengths + running
        running = running & ~(ts.terminated | ts.truncated)
        return (env_state, ts.obs, returns, lengths, running, agent_carry), None if record is None else record(ts)

    init = (env_state, obs, zeros, zeros.astype(jnp.int32), unfinished, initial_carry)
    if getattr(env.spec, "host", False) and record is None:
        # Each host step leaves the program: stop once every episode has ended, and park (`HostEnv.park`) the
        # envs whose first episode has ended.
        def unfinished_within_limit(loop):
            t, carry = loop
            return (t < max_steps) & carry[4].any()

        def next_step(loop):
            t, (vec_state, *rest) = loop
            running = rest[3]  # a stopped member's envs must not step while vmap runs its body for the others
            carry = (vec_state._replace(env_state=env.park(vec_state.env_state, running)), *rest)
            return t + 1, step(carry, jax.random.fold_in(run_key, t))[0]

        _, (_, _, returns, lengths, _, _) = jax.lax.while_loop(unfinished_within_limit, next_step,
                                                               (jnp.zeros((), jnp.int32), init))
        return EvalResult(returns, lengths)
    (_, _, returns, lengths, _, _), trace = jax.lax.scan(step, init, jax.random.split(run_key, max_steps))
    return EvalResult(returns, lengths, trace)


def evaluate_policy_of(trainer: Any, state: Any, key: jax.Array, num_episodes: int, greedy: bool,
                       record: Callable[[Any], Any] | None = None) -> EvalResult:
    """`evaluate` of one member's policy, `trainer.act(state, key, obs, greedy)`, on `trainer.eval_env`.

    For a recurrent agent (`trainer.act_carry` set) the hidden state starts at
    `trainer.act_carry(num_episodes)` and is threaded through
    `trainer.act(state, key, obs, greedy, carry) -> (action, carry)`. Episodes last
    at most the env's `max_episode_steps` (1000 if unset). `record`: as in `evaluate`.
    """
    max_steps = trainer.eval_env.spec.max_episode_steps or 1000
    if trainer.act_carry is None:
        policy = lambda k, obs, **mask: trainer.act(state, k, obs, greedy, **mask)  # noqa: E731
        return evaluate(policy, trainer.eval_env, key, num_episodes, max_steps, record=record)
    recurrent_policy = lambda k, obs, carry: trainer.act(state, k, obs, greedy, carry)  # noqa: E731
    return evaluate(recurrent_policy, trainer.eval_env, key, num_episodes, max_steps, trainer.act_carry(num_episodes),
                    record)


def greedy_member_evaluator(trainer: Any, num_episodes: int = 10) -> Callable[[Any, jax.Array], jax.Array]:
    """A jitted `(states, keys) -> [M]` mean return of `num_episodes` greedy episodes per member.

    Member m plays its greedy policy (`evaluate_policy_of`) on fresh copies of
    `trainer.eval_env`. Build it once and call it for every evaluation: it compiles once per
    shape of `states`, and any state with the same structure (another seed set,
    another dataset of the same env) reuses the compiled program.
    """

    def member_return(member_state: Any, member_key: jax.Array) -> jax.Array:
        return evaluate_policy_of(trainer, member_state, member_key, num_episodes, True).episode_return.mean()

    return jax.jit(jax.vmap(member_return))


def greedy_member_returns(trainer: Any, states: Any, key: jax.Array, num_episodes: int = 10) -> np.ndarray:
    """Per member (leading axis of `states`), the mean return of `num_episodes` greedy episodes.

    Member m uses `jax.random.split(key, M)[m]` (`greedy_member_evaluator`, compiled
    anew at each call). The benchmarks' score per seed.
    """
    num_members = jax.tree.leaves(states)[0].shape[0]
    return np.asarray(greedy_member_evaluator(trainer, num_episodes)(states, jax.random.split(key, num_members)))
