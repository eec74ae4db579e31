"""Soft Actor-Critic with twin critics and automatic entropy tuning (Haarnoja et al., 2018, arXiv 1812.05905).

    python algorithms/sac.py                                   # Pendulum-v1
    python algorithms/sac.py --utd-ratio 4 --total-timesteps 10000
    python algorithms/sac.py --env-id brax/hopper --num-envs 64 --total-timesteps 1000000

Per update: one vectorised step of `num_envs` environments into a replay buffer
(uniformly random actions until `learning_starts` env steps have been taken), then
`utd_ratio` gradient steps, each on a fresh minibatch:

1. critics: twin Q_1, Q_2 regress on the soft Bellman target (J_Q of Sec. 4.2, with the
   clipped double-Q of Fujimoto et al., 2018)
       y = r + gamma (1 - term) (min_j Q_bar_j(s', a') - alpha log pi(a'|s')),   a' ~ pi(.|s');
2. actor, against the updated critics (J_pi of Sec. 4.2, with reparameterised actions)
       J_pi = E[alpha log pi(a|s) - min_j Q_j(s, a)],   a = tanh(mu(s) + sigma(s) eps);
3. temperature (eq. 18): J(alpha) = E[-alpha (log pi(a|s) + H_target)], with
   H_target = target_entropy_per_dim * action_dim (-action_dim by default), taken on
   log alpha as in Stable-Baselines3;
4. targets: Polyak averaging Q_bar <- (1 - tau) Q_bar + tau Q.

The policy is a Gaussian squashed by tanh (distrax), so actions lie in [-1, 1];
they are stored in the replay buffer in that range and mapped linearly onto the
environment's action bounds when stepping. A done step stores its true final
observation as `next_obs`, so a truncated episode bootstraps and a terminated one
does not. brax wants many more envs than gymnax (e.g. 64 to 256, with
`utd_ratio` raised accordingly); the default of 4 suits Pendulum.
TD3 (`td3.py`) and i-SAC (`isac.py`) reuse the networks and helpers below.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import replay
from rlzoo.trainer import POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.env_adapter import (BRAX_BACKENDS, EnvSpec, VecEnv, VecEnvState, make_env, mean_last_episode_length,
                               mean_last_episode_return)
from rlzoo.networks import ACTIVATIONS, MLP, orthogonal_dense


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
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "sizes must be >= 1")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        check(self.brax_backend in BRAX_BACKENDS, "brax_backend", self.brax_backend,
              f"one of {', '.join(BRAX_BACKENDS)}")
        replay.check_can_sample(self.batch_size, self.buffer_size // self.num_envs, self.num_envs,
                                max(self.learning_starts, self.num_envs))

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.num_envs


@dataclasses.dataclass(frozen=True)
class Config(OffPolicyConfig):
    """The shared off-policy settings plus SAC's temperature switch."""

    autotune_alpha: bool = True
    """Learn the temperature alpha toward the target entropy; else keep init_alpha."""


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critics."""
    alpha_lr: float = 1e-3
    """Adam learning rate of log alpha."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics per gradient step."""
    init_alpha: float = 1.0
    """Initial entropy temperature alpha."""
    target_entropy_per_dim: float = -1.0
    """Target entropy per action dimension (the target is this times action_dim)."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "actor_lr": POSITIVE, "critic_lr": POSITIVE, "alpha_lr": POSITIVE, "gamma": UNIT_INTERVAL,
        "tau": Range(0.0, 1.0, low_closed=False), "init_alpha": POSITIVE,
    }


# --------------------------------------------------------------------------- networks


class SquashedGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), diag sigma(s)^2)): returns (mu, log sigma), log sigma squashed into its range."""

    action_dim: int
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = MLP(self.hidden_sizes, self.activation)(obs)
        mean = orthogonal_dense(self.action_dim, gain=0.01)(features)
        raw_log_std = orthogonal_dense(self.action_dim, gain=0.01)(features)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(raw_log_std) + 1.0)
        return mean, log_std


class DeterministicActor(nn.Module):
    """mu(s) = tanh(f(s)) in [-1, 1] (TD3)."""

    action_dim: int
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return jnp.tanh(orthogonal_dense(self.action_dim, gain=0.01)(MLP(self.hidden_sizes, self.activation)(obs)))


class QCritic(nn.Module):
    """Q(s, a): an MLP on the concatenated observation and action."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        features = MLP(self.hidden_sizes, self.activation)(jnp.concatenate([obs, action], axis=-1))
        return orthogonal_dense(1, gain=1.0)(features).squeeze(-1)


TwinCritic = nn.vmap(QCritic, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0,
                     axis_size=2)
"""Two independently initialised critics with stacked parameters: Q(s, a) -> [2, ...]."""


def squashed_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """The tanh-squashed diagonal Gaussian; its log-prob includes the tanh Jacobian (SAC, appendix C)."""
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
                               distrax.Block(distrax.Tanh(), ndims=1))


def sample_action(actor: SquashedGaussianActor, actor_params, obs: jax.Array, key: jax.Array):
    """a ~ pi(.|s) by reparameterisation, and log pi(a|s): ([B, A], [B])."""
    return squashed_gaussian(*actor.apply(actor_params, obs)).sample_and_log_prob(seed=key)


def to_env_action(spec: EnvSpec, action: jax.Array) -> jax.Array:
    """Maps an action in [-1, 1] linearly onto the environment's bounds [low, high]."""
    return spec.action_low + 0.5 * (action + 1.0) * (spec.action_high - spec.action_low)


def polyak(target, online, tau):
    """theta_bar <- (1 - tau) theta_bar + tau theta."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


# --------------------------------------------------------------------------- losses


def soft_q_target(reward: jax.Array, discount: jax.Array, next_q: jax.Array, next_log_prob: jax.Array,
                  alpha: jax.Array) -> jax.Array:
    """y = r + discount (min_j Q_bar_j(s', a') - alpha log pi(a'|s')), discount = gamma (1 - term) (Sec. 4.2)."""
    chex.assert_equal_shape([reward, discount, next_log_prob])
    return jax.lax.stop_gradient(reward + discount * (next_q.min(axis=0) - alpha * next_log_prob))


def critic_loss(critic: nn.Module, params, obs: jax.Array, action: jax.Array, target: jax.Array):
    """sum_j E[(Q_j(s, a) - y)^2] / 2 over the twin critics (J_Q, Sec. 4.2); returns (loss, mean Q)."""
    q = critic.apply(params, obs, action)  # [2, B]
    chex.assert_shape(q, (2, *target.shape))
    return jnp.sum(jnp.mean(0.5 * jnp.square(q - target), axis=-1)), jnp.mean(q)


def actor_loss(actor: SquashedGaussianActor, actor_params, q_fn, obs: jax.Array, key: jax.Array, alpha: jax.Array):
    """J_pi = E[alpha log pi(a|s) - min_j Q_j(s, a)] (J_pi, Sec. 4.2); returns (loss, log pi of the batch)."""
    action, log_prob = sample_action(actor, actor_params, obs, key)
    return jnp.mean(alpha * log_prob - q_fn(obs, action).min(axis=0)), log_prob


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: jax.Array) -> jax.Array:
    """J(alpha) = E[-log alpha (log pi(a|s) + H_target)] (eq. 18 on log alpha): alpha rises when entropy < target."""
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))


# --------------------------------------------------------------------------- training


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array  # in [-1, 1]
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array  # the true next observation (the final one on a done step)


class Learner(NamedTuple):
    """What the gradient steps change."""

    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_alpha: jax.Array
    actor_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any
    gradient_steps: jax.Array


class TrainState(NamedTuple):
    learner: Any
    buffer: replay.ReplayState
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


def make_vec_env(config: OffPolicyConfig) -> VecEnv:
    env = make_env(config.env_id, backend=config.brax_backend)
    check(not env.spec.discrete, "env_id", config.env_id, "SAC, TD3 and i-SAC need continuous actions")
    return VecEnv(env, config.num_envs)


def init_buffer(config: OffPolicyConfig, obs: jax.Array, action_dim: int) -> replay.ReplayState:
    example = Transition(obs[0], jnp.zeros((action_dim,)), jnp.zeros(()), jnp.zeros((), bool), jnp.zeros((), bool),
                         obs[0])
    return replay.init(example, config.buffer_size // config.num_envs, config.num_envs)


def step_and_store(vec_env: VecEnv, state: TrainState, key: jax.Array, action: jax.Array) -> TrainState:
    """Steps the envs with `action` in [-1, 1] (scaled to the bounds) and stores the transition."""
    chex.assert_shape(action, (vec_env.num_envs, vec_env.spec.num_actions))
    env_state, ts = vec_env.step(key, state.env_state, to_env_action(vec_env.spec, action))
    transition = Transition(state.obs, action, ts.reward, ts.terminated, ts.truncated, ts.final_obs)
    return state._replace(env_state=env_state, obs=ts.obs, buffer=replay.add(state.buffer, transition))


def explore(vec_env: VecEnv, state: TrainState, learning_starts_updates: int, policy) -> TrainState:
    """One vectorised env step: uniformly random actions in [-1, 1] before learning starts, then policy(key, obs)."""
    key, random_key, policy_key, env_key = jax.random.split(state.key, 4)
    policy_action = policy(policy_key, state.obs)
    random_action = jax.random.uniform(random_key, policy_action.shape, minval=-1.0, maxval=1.0)
    action = jnp.where(state.update_index < learning_starts_updates, random_action, policy_action)
    return step_and_store(vec_env, state._replace(key=key), env_key, action)


def sample_batch(config: OffPolicyConfig, buffer: replay.ReplayState, key: jax.Array,
                 gamma) -> tuple[Transition, jax.Array]:
    """A uniform minibatch and its discount gamma (1 - terminated)."""
    batch = replay.sample(buffer, key, config.batch_size).transitions
    return batch, gamma * (1.0 - batch.terminated.astype(jnp.float32))


def learn(config: OffPolicyConfig, state: TrainState, learning_starts_updates: int,
          gradient_step) -> tuple[TrainState, dict[str, jax.Array]]:
    """`utd_ratio` gradient steps on the learner, kept once `learning_starts` env steps have been taken."""
    key, learn_key = jax.random.split(state.key)
    learned, stats = jax.lax.scan(lambda learner, k: gradient_step(learner, state.buffer, k), state.learner,
                                  jax.random.split(learn_key, config.utd_ratio))
    learning = state.update_index >= learning_starts_updates
    learner = jax.tree.map(lambda new, old: jnp.where(learning, new, old), learned, state.learner)
    metrics = {"env_steps": (state.update_index + 1) * config.num_envs,
               "episode_return": mean_last_episode_return(state.env_state),
               "episode_length": mean_last_episode_length(state.env_state),
               **jax.tree.map(jnp.mean, stats)}
    return state._replace(learner=learner, key=key, update_index=state.update_index + 1), metrics


def improve_policy(config: Config, actor: SquashedGaussianActor, learner: Learner, q_fn, obs: jax.Array,
                   key: jax.Array, hp: HParams) -> tuple[Learner, dict[str, jax.Array]]:
    """One Adam step on the actor (J_pi) against `q_fn`, then one on log alpha (eq. 18) unless alpha is fixed."""
    alpha = jnp.exp(learner.log_alpha)
    (pi_loss, log_prob), grads = jax.value_and_grad(actor_loss, argnums=1, has_aux=True)(
        actor, learner.actor_params, q_fn, obs, key, alpha)
    updates, actor_opt_state = optax.adam(hp.actor_lr).update(grads, learner.actor_opt_state)
    learner = learner._replace(actor_params=optax.apply_updates(learner.actor_params, updates),
                               actor_opt_state=actor_opt_state)
    if config.autotune_alpha:
        target_entropy = hp.target_entropy_per_dim * actor.action_dim
        alpha_grad = jax.grad(temperature_loss)(learner.log_alpha, log_prob, target_entropy)
        updates, alpha_opt_state = optax.adam(hp.alpha_lr).update(alpha_grad, learner.alpha_opt_state)
        learner = learner._replace(log_alpha=optax.apply_updates(learner.log_alpha, updates),
                                   alpha_opt_state=alpha_opt_state)
    return learner, {"actor_loss": pi_loss, "alpha": alpha, "entropy": -jnp.mean(log_prob)}


def make_train(config: Config) -> Trainer:
    vec_env = make_vec_env(config)
    action_dim = vec_env.spec.num_actions
    actor = SquashedGaussianActor(action_dim, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)
    learning_starts_updates = config.learning_starts // config.num_envs

    def init(key: jax.Array, hp: HParams) -> TrainState:
        key, actor_key, critic_key, env_key = jax.random.split(key, 4)
        env_state, obs = vec_env.reset(env_key)
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs, jnp.zeros((config.num_envs, action_dim)))
        log_alpha = jnp.log(jnp.asarray(hp.init_alpha, jnp.float32))
        learner = Learner(actor_params, critic_params, critic_params, log_alpha,
                          optax.adam(hp.actor_lr).init(actor_params), optax.adam(hp.critic_lr).init(critic_params),
                          optax.adam(hp.alpha_lr).init(log_alpha), jnp.zeros((), jnp.int32))
        return TrainState(learner, init_buffer(config, obs, action_dim), env_state, obs, key, jnp.zeros((), jnp.int32))

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """The policy on raw observations, in the environment's action bounds (greedy: tanh(mu(s)))."""
        mean, log_std = actor.apply(state.learner.actor_params, obs)
        action = jnp.tanh(mean) if greedy else squashed_gaussian(mean, log_std).sample(seed=key)
        return to_env_action(vec_env.spec, action)

    def gradient_step(learner: Learner, buffer: replay.ReplayState, key: jax.Array, hp: HParams):
        """Critics and their Polyak targets, then actor, then temperature (steps 1-4 of the module docstring)."""
        sample_key, next_key, actor_key = jax.random.split(key, 3)
        batch, discount = sample_batch(config, buffer, sample_key, hp.gamma)
        alpha = jnp.exp(learner.log_alpha)
        next_action, next_log_prob = sample_action(actor, learner.actor_params, batch.next_obs, next_key)
        next_q = critic.apply(learner.target_critic_params, batch.next_obs, next_action)
        target = soft_q_target(batch.reward, discount, next_q, next_log_prob, alpha)
        (q_loss, q_mean), grads = jax.value_and_grad(critic_loss, argnums=1, has_aux=True)(
            critic, learner.critic_params, batch.obs, batch.action, target)
        updates, critic_opt_state = optax.adam(hp.critic_lr).update(grads, learner.critic_opt_state)
        critic_params = optax.apply_updates(learner.critic_params, updates)

        learner = learner._replace(critic_params=critic_params, critic_opt_state=critic_opt_state,
                                   target_critic_params=polyak(learner.target_critic_params, critic_params, hp.tau),
                                   gradient_steps=learner.gradient_steps + 1)
        q_fn = lambda obs, action: critic.apply(critic_params, obs, action)  # noqa: E731
        learner, stats = improve_policy(config, actor, learner, q_fn, batch.obs, actor_key, hp)
        return learner, {"critic_loss": q_loss, "q_mean": q_mean, **stats}

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        policy = lambda key, obs: sample_action(actor, state.learner.actor_params, obs, key)[0]  # noqa: E731
        return learn(config, explore(vec_env, state, learning_starts_updates, policy), learning_starts_updates,
                     lambda learner, buffer, key: gradient_step(learner, buffer, key, hp))

    return Trainer(init, update, config.num_updates, config.num_envs, act, vec_env.env)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("sac", Config, HParams, make_train)


if __name__ == "__main__":
    main()
