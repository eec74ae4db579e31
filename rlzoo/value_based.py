"""What the epsilon-greedy replay learners share: DQN, i-QN, ZP and SPR.

Each of them runs, per `Trainer` update:

    state = collect(vec_env, act, state, key, epsilon(hp, update_index, num_updates), train_every)
    # then one gradient step on a replay sample, kept once learning_starts env steps are stored

`collect` takes `train_every` vectorised env steps with epsilon-greedy actions and
writes each step into the replay buffer held in the training state. This module
holds the static replay settings (`ReplayConfig`), the traced numbers every such
learner has (`EpsilonGreedyHParams`), the linear epsilon schedule, the
epsilon-greedy choice, the optimiser (Adam after global-norm clipping), the
training state, and `make_trainer`, whose evaluation policy is greedy, or
epsilon-greedy with epsilon = 0.05 (Mnih et al., 2015).

Not here: networks, losses and target updates; they make each algorithm what it
is, so they stay in its file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import replay
from rlzoo.env_adapter import VecEnv, VecEnvState
from rlzoo.networks import ACTIVATIONS
from rlzoo.trainer import POSITIVE, UNIT_INTERVAL, Range, Trainer, check

EVALUATION_EPSILON = 0.05
"""Epsilon of the non-greedy evaluation policy."""

Act = Callable[..., jax.Array]
"""act(state, key, obs, greedy, eps=0.0) -> actions [num_envs]."""


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """What every epsilon-greedy replay learner fixes statically: env, budget, replay, network."""

    env_id: str = "CartPole-v1"
    """Environment id: a gymnax id or an rlzoo id with discrete actions."""
    total_timesteps: int = 500_000
    """Environment steps over all envs."""
    num_envs: int = 10
    """Parallel environments per seed."""
    train_every: int = 1
    """Vectorised env steps per gradient step."""
    buffer_size: int = 10_000
    """Replay capacity in transitions (over all envs)."""
    batch_size: int = 128
    """Minibatch size."""
    learning_starts: int = 10_000
    """Env steps collected before learning."""
    hidden_sizes: tuple[int, ...] = (120, 84)
    """Hidden layer sizes of the Q-network MLP (MinAtar uses its CNN)."""
    activation: str = "relu"
    """Hidden activation."""

    def __post_init__(self):
        check(self.total_timesteps > 0, "total_timesteps", self.total_timesteps, "must be > 0")
        for name in ("num_envs", "train_every", "batch_size"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.buffer_size >= self.num_envs, "buffer_size", self.buffer_size,
              f"must be >= num_envs ({self.num_envs})")
        check(self.learning_starts >= 0, "learning_starts", self.learning_starts, "must be >= 0")
        check(self.learning_starts < self.total_timesteps, "learning_starts", self.learning_starts,
              f"must be < total_timesteps ({self.total_timesteps}), or no gradient step is taken; lower it or "
              f"raise total_timesteps")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        replay.check_can_sample(self.batch_size, self.buffer_size // self.num_envs, self.num_envs,
                                max(self.learning_starts, self.num_envs * self.train_every,
                                    self.num_envs * self.sequence_length))

    @property
    def sequence_length(self) -> int:
        """Consecutive steps per sampled item (1: single transitions)."""
        return 1

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.train_every

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def capacity(self) -> int:
        """Replay rows: transitions per env."""
        return self.buffer_size // self.num_envs

    @property
    def learning_starts_updates(self) -> int:
        """The first update that takes a gradient step."""
        return self.learning_starts // self.steps_per_update


@struct.dataclass
class EpsilonGreedyHParams:
    """Traced numbers every epsilon-greedy learner has; `vmap` sweeps over any of them."""

    lr: float = 2.5e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    eps_start: float = 1.0
    """Initial exploration epsilon."""
    eps_end: float = 0.05
    """Final exploration epsilon."""
    exploration_fraction: float = 0.5
    """Fraction of training over which epsilon decays linearly."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "eps_start": UNIT_INTERVAL, "eps_end": UNIT_INTERVAL,
        "exploration_fraction": Range(0.0, 1.0, low_closed=False), "max_grad_norm": POSITIVE,
    }


class TrainState(NamedTuple):
    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayState
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


def make_optimizer(hp: EpsilonGreedyHParams) -> optax.GradientTransformation:
    """Adam after clipping the global gradient norm."""
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.lr))


def epsilon(hp: EpsilonGreedyHParams, update_index: jax.Array, num_updates: int) -> jax.Array:
    """Linear decay from eps_start to eps_end over exploration_fraction of the updates."""
    progress = update_index / (hp.exploration_fraction * num_updates)
    return hp.eps_start + (hp.eps_end - hp.eps_start) * jnp.clip(progress, 0.0, 1.0)


def masked_q_values(q_values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Q(s, .) with illegal actions at the lowest finite float, so that argmax and max see legal actions only
    (None: no mask). Finite, so that a terminal state without legal actions, whose value the targets multiply by
    0, gives 0 and not NaN."""
    return q_values if mask is None else jnp.where(mask, q_values, jnp.finfo(q_values.dtype).min)


def epsilon_greedy(key: jax.Array, q_values: jax.Array, eps, num_actions: int,
                   mask: jax.Array | None = None) -> jax.Array:
    """argmax_a Q(s, a) with probability 1 - eps, else a uniformly random action; with an action `mask`, both
    among the legal actions only."""
    greedy_action = jnp.argmax(masked_q_values(q_values, mask), axis=-1)
    explore_key, action_key = jax.random.split(key)
    if mask is None:
        random_action = jax.random.randint(action_key, greedy_action.shape, 0, num_actions)
    else:
        random_action = jax.random.categorical(action_key, jnp.where(mask, 0.0, -jnp.inf))
    return jnp.where(jax.random.uniform(explore_key, greedy_action.shape) < eps, random_action, greedy_action)


def greedy_or_epsilon_greedy(q_values: jax.Array, key: jax.Array, greedy: bool, eps, num_actions: int,
                             mask: jax.Array | None = None) -> jax.Array:
    """argmax Q (among legal actions, given a `mask`) when `greedy` (static), else `epsilon_greedy`."""
    if greedy:
        return jnp.argmax(masked_q_values(q_values, mask), axis=-1)
    return epsilon_greedy(key, q_values, eps, num_actions, mask)


def init_state(vec_env: VecEnv, config: ReplayConfig, key: jax.Array, init_params: Callable,
               optimizer: optax.GradientTransformation, obs_dtype: Any = None) -> TrainState:
    """Resets the envs, initialises the network (target = online) and an empty buffer of `Transition`s.

    `init_params(key, obs)` returns the network parameters; `obs_dtype` stores observations in another
    dtype (uint8 frames, say).
    """
    key, net_key, env_key = jax.random.split(key, 3)
    env_state, obs = vec_env.reset(env_key)
    params = init_params(net_key, obs)
    frame = obs[0] if obs_dtype is None else obs[0].astype(obs_dtype)
    buffer = replay.init_transitions(frame, jnp.zeros((), jnp.int32), config.capacity, config.num_envs)
    return TrainState(params, params, optimizer.init(params), buffer, env_state, obs, key, jnp.zeros((), jnp.int32))


def collect(vec_env: VecEnv, act: Act, state: Any, key: jax.Array, eps: jax.Array, num_steps: int) -> Any:
    """`num_steps` vectorised env steps of act(state, key, obs, False, eps), each row stored in `state.buffer`."""

    def env_step(state: Any, key: jax.Array):
        act_key, env_key = jax.random.split(key)
        action = act(state, act_key, state.obs, False, eps)
        chex.assert_shape(action, (vec_env.num_envs,))
        return replay.store_step(vec_env, state, env_key, action), None

    return jax.lax.scan(env_step, state, jax.random.split(key, num_steps))[0]


def make_trainer(config: ReplayConfig, vec_env: VecEnv, init: Callable, update: Callable, act: Act) -> Trainer:
    """The `Trainer` of an epsilon-greedy learner; it evaluates greedily, or with epsilon = `EVALUATION_EPSILON`."""
    evaluation_policy = lambda state, key, obs, greedy: (act(state, key, obs, True) if greedy  # noqa: E731
                                                         else act(state, key, obs, False, EVALUATION_EPSILON))
    return Trainer(init, update, config.num_updates, config.steps_per_update, evaluation_policy, vec_env.env)
