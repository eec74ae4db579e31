"""The 19-state random walk (Sutton & Barto, 2nd ed., Example 7.1 and Fig. 12.3).

States 1..19 lie in a row between two terminals; every episode starts in the
middle (state 10). Each step moves one state left or right: action 0 goes left,
action 1 goes right, so the uniform random policy gives the book's walk. Leaving
on the left gives reward -1, on the right +1, otherwise 0. With gamma = 1 the true
values under the uniform policy are -18/20, -16/20, ..., 18/20 (`true_values`).
The observation is the one-hot state index, which makes linear TD tabular.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces


@struct.dataclass
class RandomWalkState(environment.EnvState):
    position: jax.Array  # 1..num_states; 0 and num_states + 1 are terminal
    time: jax.Array


@struct.dataclass
class RandomWalkParams(environment.EnvParams):
    max_steps_in_episode: int = 10_000


class RandomWalk(environment.Environment[RandomWalkState, RandomWalkParams]):
    """A gymnax-API random walk with `num_states` non-terminal states."""

    def __init__(self, num_states: int = 19):
        super().__init__()
        if num_states < 1 or num_states % 2 == 0:
            raise ValueError(f"num_states must be a positive odd number, got {num_states}")
        self.num_states = num_states

    @property
    def default_params(self) -> RandomWalkParams:
        return RandomWalkParams()

    def true_values(self) -> jax.Array:
        """V(s) for s = 1..num_states under the uniform random policy, gamma = 1."""
        n = self.num_states
        return jnp.arange(1, n + 1, dtype=jnp.float32) * 2.0 / (n + 1) - 1.0

    def step_env(self, key, state, action, params) -> tuple[jax.Array, RandomWalkState, jax.Array, jax.Array, dict[Any, Any]]:
        position = state.position + jnp.where(action == 1, 1, -1)
        reward = jnp.where(position == 0, -1.0, jnp.where(position == self.num_states + 1, 1.0, 0.0))
        state = RandomWalkState(position=position, time=state.time + 1)
        return self.get_obs(state), state, reward, self.is_terminal(state, params), {}

    def reset_env(self, key, params) -> tuple[jax.Array, RandomWalkState]:
        state = RandomWalkState(position=jnp.asarray((self.num_states + 1) // 2), time=jnp.asarray(0))
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None) -> jax.Array:
        return jax.nn.one_hot(state.position - 1, self.num_states)

    def is_terminated(self, state, params) -> jax.Array:
        return jnp.logical_or(state.position <= 0, state.position >= self.num_states + 1)

    @property
    def name(self) -> str:
        return f"RandomWalk{self.num_states}"

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(2)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.num_states,), jnp.float32)
