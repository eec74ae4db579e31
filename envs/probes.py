"""Probe environments: two-state tasks whose values are known in closed form, for checking targets.

After A. Jones's "debugging RL" probe environments: the environment is so small that
a learner's value estimates must match the closed form, and each way of getting an
episode end wrong gives a different, predictable number.

The state is a phase that alternates 0, 1, 0, 1, ... whatever the action; the
observation is the one-hot phase, and acting from phase 1 pays 1 (from phase 0, 0).
Every episode starts in phase 0. Two ways to end it:

- `ProbeTerminate-*`: each step from phase 0 terminates with probability 1/2 (a
  Markov termination, no time limit that matters). With discount gamma,
      Q(1) = 1 + gamma Q(0),    Q(0) = gamma Q(1) / 2    =>  Q(0) = gamma / (2 - gamma^2).
  A learner that ignores termination finds the truncated values below instead.
- `ProbeTruncate-*`: never terminates; the time limit truncates each episode after
  3 steps, on the step from phase 0 whose true final observation is phase 1 (while
  the reset observation is phase 0). The values are those of the endless cycle,
      Q(1) = 1 + gamma Q(0),    Q(0) = gamma Q(1)            =>  Q(0) = gamma / (1 - gamma^2).
  Treating truncation as termination, or bootstrapping from the reset observation,
  gives other values (`probe_values`).

The action is ignored, so every policy has these values: `*-v0` has 2 discrete
actions, `*Continuous-v0` one action in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

TRUNCATE_AFTER = 3
TERMINATE_PROBABILITY = 0.5


@struct.dataclass
class ProbeState(environment.EnvState):
    phase: jax.Array  # 0 or 1 (`time` comes from gymnax's EnvState)


@struct.dataclass
class ProbeParams(environment.EnvParams):
    max_steps_in_episode: int = 1_000


class Probe(environment.Environment[ProbeState, ProbeParams]):
    """The two-phase cycle of the module docstring, ending by `termination` or truncation."""

    def __init__(self, terminates: bool, continuous: bool):
        super().__init__()
        self.terminates = terminates
        self.continuous = continuous

    @property
    def default_params(self) -> ProbeParams:
        return ProbeParams(max_steps_in_episode=1_000 if self.terminates else TRUNCATE_AFTER)

    def step_env(self, key, state, action, params) -> tuple[jax.Array, ProbeState, jax.Array, jax.Array, dict[Any, Any]]:
        reward = state.phase.astype(jnp.float32)
        ends = jax.random.bernoulli(key, TERMINATE_PROBABILITY) & (state.phase == 0)
        terminated = ends if self.terminates else jnp.asarray(False)
        state = ProbeState(phase=1 - state.phase, time=state.time + 1)
        return self.get_obs(state), state, reward, terminated, {}

    def reset_env(self, key, params) -> tuple[jax.Array, ProbeState]:
        state = ProbeState(phase=jnp.asarray(0), time=jnp.asarray(0))
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None) -> jax.Array:
        return jax.nn.one_hot(state.phase, 2)

    @property
    def name(self) -> str:
        return ("ProbeTerminate" if self.terminates else "ProbeTruncate") + ("Continuous" if self.continuous else "")

    @property
    def num_actions(self) -> int:
        return 1 if self.continuous else 2

    def action_space(self, params=None) -> spaces.Discrete | spaces.Box:
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32) if self.continuous else spaces.Discrete(2)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (2,), jnp.float32)


def probe_values(gamma: float, ending: str) -> tuple[float, float]:
    """(Q(phase 0), Q(phase 1)), for every action, as a learner's targets make them.

    `ending` is the true rule, "terminate" or "truncate", or a mistake on the
    truncating probe: "truncate_as_terminate" (the last step does not bootstrap) or
    "reset_observation" (it bootstraps from the reset observation, phase 0). Half of
    the steps from phase 0 are last steps in both probes (one of the two per
    3-step episode), so a wrong target there moves Q(0) by half of its error.
    """
    q0_of = {  # Q(0) as a function of Q(1), solved below with Q(1) = 1 + gamma Q(0)
        "terminate": (TERMINATE_PROBABILITY * gamma, 0.0),
        "truncate": (gamma, 0.0),
        "truncate_as_terminate": (0.5 * gamma, 0.0),
        "reset_observation": (0.5 * gamma, 0.5 * gamma),  # Q(0) = gamma Q(1) / 2 + gamma Q(0) / 2
    }
    if ending not in q0_of:
        raise ValueError(f"ending {ending!r}: one of {', '.join(q0_of)}")
    a, b = q0_of[ending]
    q0 = a / (1.0 - b - a * gamma)  # Q(0) = a (1 + gamma Q(0)) + b Q(0)
    return q0, 1.0 + gamma * q0


MISTAKES = {"terminate": ("truncate",),  # ignoring termination: the endless cycle's values
            "truncate": ("truncate_as_terminate", "reset_observation")}
"""For each true ending, the `probe_values` endings that a learner with a classic end-of-episode bug finds."""


def registry() -> dict[str, Any]:
    """The four probe ids and their factories."""
    return {
        f"{Probe(terminates, continuous).name}-v0": (lambda t=terminates, c=continuous: Probe(t, c))
        for terminates in (True, False) for continuous in (False, True)
    }
