"""A meta-RL wrapper: random linear projections per episode, several trials, and the agent's own history as input.

Following Lu et al. (NeurIPS 2023, Sec. 5.3), each *meta-episode* draws a random
linear projection of the task's observations, o' = W_o o with W_o ~ N(0, 1/d), and
for continuous actions also of the agent's actions, a_env = clip(W_a a), and then
runs `num_trials` episodes (trials) of the task under them. The agent sees

    [W_o o_t, previous action (one-hot if discrete), previous reward, trial-done flag]

where the flag says the previous step ended a trial (the task auto-reset inside
the meta-episode). A recurrent agent can thus infer the projection within a
meta-episode and improve from trial to trial. The meta-episode terminates when its
last trial ends (by termination or truncation of that trial); new projections are
drawn at the next reset.

`MetaRLEnv` wraps any `rlzoo.env_adapter.Env` (gymnax, brax or rlzoo ids), and
`make_env("meta/<id>")` builds one with 4 trials. The wrapped env must return the
gymnax-1.x flags, kept apart: `step(key, state, action) -> (state, obs, reward,
terminated, truncated, final_obs)`; anything else is refused with an error that
says what is missing.

`trial_returns` splits a meta-episode's rewards by trial (the flag in the agent's
observation marks where a trial ended), to see whether an agent does better in
later trials than in the first: the signature of in-context learning.

Not here: the tasks themselves, or held-out task splits (draw another key).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from rlzoo.trainer import ConfigError
from rlzoo.env_adapter import EnvSpec


class MetaState(NamedTuple):
    inner: Any  # the wrapped env's state
    obs_projection: chex.Array  # [d, d]
    action_projection: chex.Array  # [m, m] for continuous actions, [0, 0] for discrete
    trials_done: chex.Array  # trials finished in this meta-episode
    time: chex.Array  # steps in this meta-episode


def check_env_flags(env: Any) -> None:
    """Refuses an env that does not report terminated and truncated flags the way the wrapper needs."""
    name = getattr(getattr(env, "spec", None), "env_id", type(env).__name__)
    if not isinstance(getattr(env, "spec", None), EnvSpec) or not callable(getattr(env, "reset", None)):
        raise ConfigError(f"env {name!r} cannot be meta-wrapped: it has no rlzoo EnvSpec and reset(key); wrap it "
                          "with rlzoo.env_adapter.make_env first")
    if env.spec.action_mask:
        raise ConfigError(f"env {name!r} cannot be meta-wrapped: it has an action mask, which the meta-RL wrapper "
                          "does not pass on; allowed: an env without one")
    key = jax.random.PRNGKey(0)
    try:
        state, _ = jax.eval_shape(env.reset, key)
        action = jax.ShapeDtypeStruct(env.spec.action_shape, jnp.int32 if env.spec.discrete else jnp.float32)
        out = jax.eval_shape(env.step, key, state, action)
    except TypeError as error:
        raise ConfigError(f"env {name!r} cannot be meta-wrapped: step(key, state, action) failed ({error})") from error
    flags_ok = (isinstance(out, tuple) and len(out) == 6
                and all(getattr(out[i], "dtype", None) == jnp.bool_ and out[i].shape == () for i in (3, 4)))
    if not flags_ok:
        raise ConfigError(f"env {name!r} cannot be meta-wrapped: its step must return (state, obs, reward, "
                          "terminated, truncated, final_obs) with boolean terminated and truncated flags "
                          "(gymnax 1.x semantics); the wrapper needs them to count trials")


def trial_done_flag(obs: chex.Array) -> chex.Array:
    """The trial-done flag of `MetaRLEnv` observations [..., obs_dim]: the last entry (see `_observe`)."""
    return obs[..., -1] > 0.5


def trial_returns(rewards: chex.Array, trial_done: chex.Array, num_trials: int) -> chex.Array:
    """Return of each trial of the first meta-episode: rewards and trial_done [T, N] -> [N, num_trials].

    Step t belongs to trial sum_{u<t} trial_done[u]; steps of later meta-episodes (trial >= num_trials) are
    dropped, and a trial not finished within T counts what it got so far.
    """
    chex.assert_equal_shape([rewards, trial_done])
    done = trial_done.astype(jnp.int32)
    trial = jnp.cumsum(done, axis=0) - done
    return jnp.einsum("tn,tnk->nk", rewards.astype(jnp.float32), jax.nn.one_hot(trial, num_trials))


@dataclasses.dataclass(frozen=True)
class MetaRLEnv:
    """`num_trials` trials of `env` per meta-episode under random projections (see the module docstring)."""

    env: Any
    num_trials: int = 4

    def __post_init__(self):
        if self.num_trials < 1:
            raise ConfigError(f"num_trials={self.num_trials!r} is not allowed: must be >= 1")
        check_env_flags(self.env)

    @property
    def spec(self) -> EnvSpec:
        inner = self.env.spec
        obs_dim = math.prod(inner.obs_shape)
        max_steps = inner.max_episode_steps * self.num_trials if inner.max_episode_steps else None
        return dataclasses.replace(inner, env_id=f"meta/{inner.env_id}", obs_shape=(obs_dim + inner.num_actions + 2,),
                                   max_episode_steps=max_steps)

    def _draw(self, key: chex.PRNGKey) -> tuple[chex.Array, chex.Array]:
        inner = self.env.spec
        obs_dim = math.prod(inner.obs_shape)
        obs_key, action_key = jax.random.split(key)
        obs_projection = jax.random.normal(obs_key, (obs_dim, obs_dim)) / jnp.sqrt(obs_dim)
        m = 0 if inner.discrete else inner.num_actions
        action_projection = jax.random.normal(action_key, (m, m)) / jnp.sqrt(max(m, 1))
        return obs_projection, action_projection

    def _observe(self, state: MetaState, obs: chex.Array, action: chex.Array, reward: chex.Array,
                 trial_done: chex.Array) -> chex.Array:
        spec = self.env.spec
        previous = jax.nn.one_hot(action, spec.num_actions) if spec.discrete else jnp.asarray(action, jnp.float32)
        return jnp.concatenate([state.obs_projection @ obs.reshape(-1).astype(jnp.float32), previous.reshape(-1),
                                jnp.asarray(reward, jnp.float32)[None], trial_done.astype(jnp.float32)[None]])

    def reset(self, key: chex.PRNGKey) -> tuple[MetaState, chex.Array]:
        draw_key, reset_key = jax.random.split(key)
        obs_projection, action_projection = self._draw(draw_key)
        inner_state, obs = self.env.reset(reset_key)
        state = MetaState(inner_state, obs_projection, action_projection, jnp.zeros((), jnp.int32),
                          jnp.zeros((), jnp.int32))
        no_action = jnp.zeros(self.env.spec.action_shape, jnp.int32 if self.env.spec.discrete else jnp.float32)
        return state, self._observe(state, obs, no_action, jnp.zeros(()), jnp.zeros((), jnp.bool_))

    def step(self, key: chex.PRNGKey, state: MetaState, action: chex.Array):
        spec = self.env.spec
        step_key, reset_key = jax.random.split(key)
        env_action = action if spec.discrete else jnp.clip(state.action_projection @ action, spec.action_low,
                                                             spec.action_high)
        inner, obs, reward, terminated, truncated, final_obs = self.env.step(step_key, state.inner, env_action)
        trial_done = jnp.logical_or(terminated, truncated)
        trials_done = state.trials_done + trial_done
        stepped = state._replace(inner=inner, trials_done=trials_done, time=state.time + 1)
        meta_done = trials_done >= self.num_trials
        final = self._observe(stepped, final_obs, action, reward, trial_done)
        fresh, fresh_obs = self.reset(reset_key)
        next_state = jax.tree.map(lambda a, b: jnp.where(meta_done, a, b), fresh, stepped)
        next_obs = jnp.where(meta_done, fresh_obs, self._observe(stepped, obs, action, reward, trial_done))
        return next_state, next_obs, reward, meta_done, jnp.zeros((), jnp.bool_), final
