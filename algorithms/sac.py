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
`utd_ratio` raised accordingly); the default of 4 suits Pendulum. The acting
loop, replay and minibatches are those of every off-policy actor-critic
(`rlzoo.off_policy`); i-SAC (`isac.py`) reuses the losses below.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import off_policy, replay
from rlzoo.envs import make_env
from rlzoo.networks import SquashedGaussianActor, TwinCritic, squashed_gaussian
from rlzoo.off_policy import OffPolicyConfig, twin_critic_loss
from rlzoo.trainer import POSITIVE, UNIT_INTERVAL, Range, Trainer
from rlzoo.updates import optimizer_step, polyak


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


def sample_action(actor: SquashedGaussianActor, actor_params, obs: jax.Array, key: jax.Array):
    """a ~ pi(.|s) by reparameterisation, and log pi(a|s): ([B, A], [B])."""
    return squashed_gaussian(*actor.apply(actor_params, obs)).sample_and_log_prob(seed=key)


# --------------------------------------------------------------------------- losses


def soft_q_target(reward: jax.Array, discount: jax.Array, next_q: jax.Array, next_log_prob: jax.Array,
                  alpha: jax.Array) -> jax.Array:
    """y = r + discount (min_j Q_bar_j(s', a') - alpha log pi(a'|s')), discount = gamma (1 - term) (Sec. 4.2)."""
    chex.assert_equal_shape([reward, discount, next_log_prob])
    return jax.lax.stop_gradient(reward + discount * (next_q.min(axis=0) - alpha * next_log_prob))


def actor_loss(actor: SquashedGaussianActor, actor_params, q_fn, obs: jax.Array, key: jax.Array, alpha: jax.Array):
    """J_pi = E[alpha log pi(a|s) - min_j Q_j(s, a)] (J_pi, Sec. 4.2); returns (loss, log pi of the batch)."""
    action, log_prob = sample_action(actor, actor_params, obs, key)
    return jnp.mean(alpha * log_prob - q_fn(obs, action).min(axis=0)), log_prob


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: jax.Array) -> jax.Array:
    """J(alpha) = E[-log alpha (log pi(a|s) + H_target)] (eq. 18 on log alpha): alpha rises when entropy < target."""
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))


# --------------------------------------------------------------------------- training


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


def init_learner(config: Config, actor: SquashedGaussianActor, critic: TwinCritic, actor_key: jax.Array,
                 critic_key: jax.Array, obs: jax.Array, hp: HParams) -> Learner:
    """Actor, twin critics (targets = online), log alpha and their Adam states."""
    actor_params = actor.init(actor_key, obs)
    critic_params = critic.init(critic_key, obs, jnp.zeros((config.num_envs, actor.action_dim)))
    log_alpha = jnp.log(jnp.asarray(hp.init_alpha, jnp.float32))
    return Learner(actor_params, critic_params, critic_params, log_alpha,
                   optax.adam(hp.actor_lr).init(actor_params), optax.adam(hp.critic_lr).init(critic_params),
                   optax.adam(hp.alpha_lr).init(log_alpha), jnp.zeros((), jnp.int32))


def act(actor: SquashedGaussianActor, learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
    """tanh(mu(s)) when greedy, else a ~ pi(.|s); in [-1, 1]."""
    mean, log_std = actor.apply(learner.actor_params, obs)
    return jnp.tanh(mean) if greedy else squashed_gaussian(mean, log_std).sample(seed=key)


def improve_policy(config: Config, actor: SquashedGaussianActor, learner: Learner, q_fn, obs: jax.Array,
                   key: jax.Array, hp: HParams) -> tuple[Learner, dict[str, jax.Array]]:
    """One Adam step on the actor (J_pi) against `q_fn`, then one on log alpha (eq. 18) unless alpha is fixed."""
    alpha = jnp.exp(learner.log_alpha)
    actor_params, actor_opt_state, (pi_loss, log_prob) = optimizer_step(
        optax.adam(hp.actor_lr), lambda p: actor_loss(actor, p, q_fn, obs, key, alpha), learner.actor_params,
        learner.actor_opt_state)
    learner = learner._replace(actor_params=actor_params, actor_opt_state=actor_opt_state)
    if config.autotune_alpha:
        target_entropy = hp.target_entropy_per_dim * actor.action_dim
        log_alpha, alpha_opt_state, _ = optimizer_step(
            optax.adam(hp.alpha_lr), lambda la: (temperature_loss(la, log_prob, target_entropy), None),
            learner.log_alpha, learner.alpha_opt_state)
        learner = learner._replace(log_alpha=log_alpha, alpha_opt_state=alpha_opt_state)
    return learner, {"actor_loss": pi_loss, "alpha": alpha, "entropy": -jnp.mean(log_prob)}


def make_train(config: Config) -> Trainer:
    vec_env = off_policy.make_vec_env(config, make_env)
    actor = SquashedGaussianActor(vec_env.spec.num_actions, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)

    def gradient_step(learner: Learner, buffer: replay.ReplayState, key: jax.Array, hp: HParams):
        """Critics and their Polyak targets, then actor, then temperature (steps 1-4 of the module docstring)."""
        sample_key, next_key, actor_key = jax.random.split(key, 3)
        batch, discount = off_policy.sample_batch(config, buffer, sample_key, hp.gamma)
        alpha = jnp.exp(learner.log_alpha)
        next_action, next_log_prob = sample_action(actor, learner.actor_params, batch.next_obs, next_key)
        next_q = critic.apply(learner.target_critic_params, batch.next_obs, next_action)
        target = soft_q_target(batch.reward, discount, next_q, next_log_prob, alpha)
        critic_params, critic_opt_state, (q_loss, q_mean) = optimizer_step(
            optax.adam(hp.critic_lr), lambda p: twin_critic_loss(critic, p, batch.obs, batch.action, target),
            learner.critic_params, learner.critic_opt_state)
        target_critic_params = polyak(learner.target_critic_params, critic_params, hp.tau)
        learner = learner._replace(critic_params=critic_params, critic_opt_state=critic_opt_state,
                                   target_critic_params=target_critic_params,
                                   gradient_steps=learner.gradient_steps + 1)
        q_fn = lambda obs, action: critic.apply(critic_params, obs, action)  # noqa: E731
        learner, stats = improve_policy(config, actor, learner, q_fn, batch.obs, actor_key, hp)
        return learner, {"critic_loss": q_loss, "q_mean": q_mean, **stats}

    return off_policy.make_trainer(
        config, vec_env, init_learner=functools.partial(init_learner, config, actor, critic),
        explore=lambda learner, key, obs, hp: sample_action(actor, learner.actor_params, obs, key)[0],
        gradient_step=gradient_step, act=functools.partial(act, actor))


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("sac", Config, HParams, make_train)


if __name__ == "__main__":
    main()
