"""What the online off-policy actor-critics share: SAC, TD3 and i-SAC.

An algorithm file supplies four pure functions and gets a `rlzoo.trainer.Trainer`
back from `make_trainer`:

    init_learner(actor_key, critic_key, obs, hparams) -> learner  # params, optimiser states, targets
    explore(learner, key, obs, hparams) -> actions in [-1, 1]      # the behaviour policy once learning starts
    gradient_step(learner, buffer, key, hparams) -> (learner, stats)  # one update on a fresh minibatch
    act(learner, key, obs, greedy) -> actions in [-1, 1]            # for evaluation episodes

One `Trainer.update` is then

    action = uniform in [-1, 1] before learning_starts env steps, else explore(...)
    state  = replay.store_step(vec_env, state, key, action, to_env_action(action))
    learner = scan(gradient_step, learner, utd_ratio keys)   # kept once learning has started

Actions live in [-1, 1] in the replay buffer and in the losses, and are mapped
linearly onto the environment's bounds when stepping. A done step stores its true
final observation as `next_obs`, so the discount of `sample_batch`,
gamma (1 - terminated), bootstraps a truncated episode and not a terminated one.

Also here: `OffPolicyConfig`, the static settings these algorithms share,
`twin_critic_loss` (clipped double-Q critics regress on a target), and the
minibatch sampler. Not here: targets, actor and temperature losses (in each
algorithm's file), or networks (`rlzoo.networks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rlzoo import replay
from rlzoo.env_adapter import BRAX_BACKENDS, EnvSpec, VecEnv, VecEnvState, episode_metrics
from rlzoo.networks import ACTIVATIONS
from rlzoo.trainer import Trainer, check
from rlzoo.updates import tree_select


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig:
    """Static settings shared by SAC, TD3 and i-SAC: they fix shapes and the compiled program (the CLI)."""

    env_id: str = "Pendulum-v1"
    """Environment id with continuous actions: a gymnax id or brax/<name>."""
    total_timesteps: int = 20_000
    """Environment steps over all envs."""
    num_envs: int = 4
    """Parallel environments per seed (brax wants more, e.g. 64 to 256)."""
    utd_ratio: int = 1
    """Update-to-data ratio: gradient steps per vectorised env step (>= 1)."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (over all envs)."""
    batch_size: int = 256
    """Minibatch size of each gradient step."""
    learning_starts: int = 2_000
    """Env steps of uniformly random actions collected before learning."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and critic MLPs."""
    activation: str = "relu"
    """Hidden activation: tanh, relu, swish or gelu."""
    brax_backend: str = "positional"
    """Physics backend for brax/<name> ids."""

    def __post_init__(self):
        check(self.total_timesteps > 0, "total_timesteps", self.total_timesteps, "must be > 0")
        check(self.utd_ratio >= 1, "utd_ratio", self.utd_ratio, "must be >= 1 (gradient steps per env step)")
        for name in ("num_envs", "batch_size"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.total_timesteps >= self.num_envs, "total_timesteps", self.total_timesteps,
              f"must be at least one vectorised step, num_envs = {self.num_envs}")
        check(self.buffer_size >= self.num_envs, "buffer_size", self.buffer_size,
              f"must be >= num_envs ({self.num_envs})")
        check(self.learning_starts >= 0, "learning_starts", self.learning_starts, "must be >= 0")
        check(self.learning_starts < self.total_timesteps, "learning_starts", self.learning_starts,
              f"must be < total_timesteps ({self.total_timesteps}), or no gradient step is taken; lower it or "
              f"raise total_timesteps")
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "sizes must be >= 1")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        check(self.brax_backend in BRAX_BACKENDS, "brax_backend", self.brax_backend,
              f"one of {', '.join(BRAX_BACKENDS)}")
        replay.check_can_sample(self.batch_size, self.buffer_size // self.num_envs, self.num_envs,
                                max(self.learning_starts, self.num_envs))

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.num_envs

    @property
    def learning_starts_updates(self) -> int:
        """The first update that takes gradient steps."""
        return self.learning_starts // self.num_envs


class TrainState(NamedTuple):
    learner: Any  # the algorithm's own state (params, optimiser states, targets)
    buffer: replay.ReplayState
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


def make_vec_env(config: OffPolicyConfig, make_env: Callable[..., Any]) -> VecEnv:
    """`num_envs` copies of `make_env(env_id, backend=...)` (the resolver `rlzoo.envs.make_env`), if its
    actions are continuous; else an error naming the id."""
    env = make_env(config.env_id, backend=config.brax_backend)
    check(not env.spec.discrete, "env_id", config.env_id, "SAC, TD3 and i-SAC need continuous actions")
    return VecEnv(env, config.num_envs)


def to_env_action(spec: EnvSpec, action: jax.Array) -> jax.Array:
    """Maps an action in [-1, 1] linearly onto the environment's bounds [low, high]."""
    return spec.action_low + 0.5 * (action + 1.0) * (spec.action_high - spec.action_low)


def sample_batch(config: OffPolicyConfig, buffer: replay.ReplayState, key: jax.Array,
                 gamma) -> tuple[replay.Transition, jax.Array]:
    """A uniform minibatch and its discount gamma (1 - terminated): a terminal step does not bootstrap."""
    batch = replay.sample(buffer, key, config.batch_size).transitions
    return batch, gamma * (1.0 - batch.terminated.astype(jnp.float32))


def twin_critic_loss(critic: nn.Module, params: Any, obs: jax.Array, action: jax.Array, target: jax.Array):
    """sum_j E[(Q_j(s, a) - y)^2] / 2 over the twin critics; returns (loss, mean Q)."""
    q = critic.apply(params, obs, action)  # [2, B]
    chex.assert_shape(q, (2, *target.shape))
    return jnp.sum(jnp.mean(0.5 * jnp.square(q - target), axis=-1)), jnp.mean(q)


def make_trainer(config: OffPolicyConfig, vec_env: VecEnv, init_learner: Callable, explore: Callable,
                 gradient_step: Callable, act: Callable) -> Trainer:
    """A `Trainer` whose update is one explored env step and `utd_ratio` gradient steps (module docstring)."""
    spec = vec_env.spec
    action_dim = spec.num_actions

    def init(key: jax.Array, hp: Any) -> TrainState:
        key, actor_key, critic_key, env_key = jax.random.split(key, 4)
        env_state, obs = vec_env.reset(env_key)
        learner = init_learner(actor_key, critic_key, obs, hp)
        buffer = replay.init_transitions(obs[0], jnp.zeros((action_dim,)), config.buffer_size // config.num_envs,
                                         config.num_envs)
        return TrainState(learner, buffer, env_state, obs, key, jnp.zeros((), jnp.int32))

    def explore_and_store(state: TrainState, hp: Any) -> TrainState:
        """One vectorised env step: uniformly random actions before learning starts, then `explore`."""
        key, random_key, policy_key, env_key = jax.random.split(state.key, 4)
        policy_action = explore(state.learner, policy_key, state.obs, hp)
        random_action = jax.random.uniform(random_key, policy_action.shape, minval=-1.0, maxval=1.0)
        action = jnp.where(state.update_index < config.learning_starts_updates, random_action, policy_action)
        chex.assert_shape(action, (vec_env.num_envs, action_dim))
        return replay.store_step(vec_env, state._replace(key=key), env_key, action, to_env_action(spec, action))

    def update(state: TrainState, hp: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        state = explore_and_store(state, hp)
        key, learn_key = jax.random.split(state.key)
        learned, stats = jax.lax.scan(lambda learner, k: gradient_step(learner, state.buffer, k, hp), state.learner,
                                      jax.random.split(learn_key, config.utd_ratio))
        learner = tree_select(state.update_index >= config.learning_starts_updates, learned, state.learner)
        metrics = {"env_steps": (state.update_index + 1) * config.num_envs, **episode_metrics(state.env_state),
                   **jax.tree.map(jnp.mean, stats)}
        return state._replace(learner=learner, key=key, update_index=state.update_index + 1), metrics

    def act_in_env(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """The policy on raw observations, in the environment's action bounds."""
        return to_env_action(spec, act(state.learner, key, obs, greedy))

    return Trainer(init, update, config.num_updates, config.num_envs, act_in_env, vec_env.env)
