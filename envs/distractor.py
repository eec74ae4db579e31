"""Distractor dimensions: a gymnax-API wrapper that appends N standard-normal noise dimensions to observations.

The noise is drawn afresh at every reset and step, carries no information about
the task, and so tests whether a representation learns to ignore it (Ni et al.,
2024, "Bridging State and History Representations", the distractor experiments
with 2^4-2^8 dimensions). Observations must be flat vectors. `wrap_env(env, n)`
wraps an `rlzoo.env_adapter` gymnax env and fixes its spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces


class Distractors(environment.Environment):
    """`env` with `num_distractors` N(0, 1) dimensions appended to every observation."""

    def __init__(self, env: environment.Environment, num_distractors: int):
        super().__init__()
        if num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
        self.env, self.num_distractors = env, num_distractors

    @property
    def default_params(self) -> Any:
        return self.env.default_params

    def _noisy(self, key: jax.Array, obs: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, (*obs.shape[:-1], self.num_distractors), jnp.float32)
        return jnp.concatenate([obs.astype(jnp.float32), noise], axis=-1)

    def step_env(self, key, state, action, params):
        key, noise_key = jax.random.split(key)
        obs, state, reward, terminated, info = self.env.step_env(key, state, action, params)
        return self._noisy(noise_key, obs), state, reward, terminated, info

    def reset_env(self, key, params):
        key, noise_key = jax.random.split(key)
        obs, state = self.env.reset_env(key, params)
        return self._noisy(noise_key, obs), state

    def is_truncated(self, state, params) -> jax.Array:
        return self.env.is_truncated(state, params)

    @property
    def name(self) -> str:
        return f"{self.env.name}+distractors{self.num_distractors}"

    @property
    def num_actions(self) -> int:
        return self.env.num_actions

    def action_space(self, params=None):
        return self.env.action_space(params)

    def observation_space(self, params) -> spaces.Box:
        inner = self.env.observation_space(params)
        if len(inner.shape) != 1:
            raise ValueError(f"distractors need flat observations, got shape {inner.shape}")
        return spaces.Box(-jnp.inf, jnp.inf, (inner.shape[0] + self.num_distractors,), jnp.float32)


def wrap_env(env: Any, num_distractors: int) -> Any:
    """An `rlzoo.env_adapter.GymnaxEnv` with distractors appended, its spec's observation shape updated."""
    if num_distractors == 0:
        return env
    wrapped = Distractors(env.env, num_distractors)
    obs_shape = tuple(wrapped.observation_space(env.params).shape)
    spec = dataclasses.replace(env.spec, env_id=f"{env.spec.env_id}+distractors{num_distractors}", obs_shape=obs_shape)
    return dataclasses.replace(env, env=wrapped, spec=spec)
