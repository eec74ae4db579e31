"""TD3: Twin Delayed Deep Deterministic policy gradient (Fujimoto et al., 2018, arXiv 1802.09477).

    python algorithms/td3.py                                   # Pendulum-v1
    python algorithms/td3.py --policy-delay 3 --sweep exploration_noise=0.1,0.2

Per update: one vectorised step of `num_envs` environments into a replay buffer
(uniformly random actions until `learning_starts` env steps, then
a = clip(mu(s) + N(0, exploration_noise^2), -1, 1)), then `utd_ratio` gradient steps:

1. twin critics regress on the clipped double-Q target with target policy smoothing
   (Algorithm 1 of the paper; clipped double-Q, eq. 10; smoothing, eq. 14)
       a' = clip(mu_bar(s') + clip(N(0, policy_noise^2), -noise_clip, noise_clip), -1, 1),
       y  = r + gamma (1 - term) min_j Q_bar_j(s', a');
2. every `policy_delay` gradient steps (delayed policy updates, section 5.2): the actor
   ascends Q_1(s, mu(s)) (the deterministic policy gradient), and the target actor
   and critics follow by Polyak averaging with `tau`.

Actions live in [-1, 1] (a tanh actor; noise scales are in that range) and are mapped
linearly onto the environment's bounds when stepping; the acting loop, replay and
minibatches are those of every off-policy actor-critic (`rlzoo.off_policy`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import off_policy, replay
from rlzoo.envs import make_env
from rlzoo.networks import DeterministicActor, TwinCritic
from rlzoo.off_policy import OffPolicyConfig, twin_critic_loss
from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer
from rlzoo.updates import is_due, optimizer_step, polyak


@dataclasses.dataclass(frozen=True)
class Config(OffPolicyConfig):
    """The off-policy settings (env, budget, envs, UTD ratio, replay, networks); TD3 adds none."""


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target actor and critics (on delayed steps)."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise (actions in [-1, 1])."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise (actions in [-1, 1])."""
    policy_delay: float = 2.0
    """Gradient steps per actor and target update."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "actor_lr": POSITIVE, "critic_lr": POSITIVE, "gamma": UNIT_INTERVAL,
        "tau": Range(0.0, 1.0, low_closed=False), "policy_noise": NON_NEGATIVE, "noise_clip": NON_NEGATIVE,
        "exploration_noise": NON_NEGATIVE, "policy_delay": Range(1.0),
    }


class Learner(NamedTuple):
    """What the gradient steps change."""

    actor_params: Any
    critic_params: Any
    target_actor_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    critic_opt_state: Any
    gradient_steps: jax.Array
    actor_loss: jax.Array  # -Q_1(s, mu(s)) at the latest actor update (the metric between delayed steps)


def smoothed_target_action(target_action: jax.Array, key: jax.Array, hp: HParams) -> jax.Array:
    """a' = clip(mu_bar(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma^2) (target policy smoothing, eq. 14)."""
    noise = jnp.clip(hp.policy_noise * jax.random.normal(key, target_action.shape), -hp.noise_clip, hp.noise_clip)
    return jnp.clip(target_action + noise, -1.0, 1.0)


def noisy_action(actor: DeterministicActor, actor_params, obs: jax.Array, key: jax.Array, noise) -> jax.Array:
    """clip(mu(s) + N(0, noise^2), -1, 1): Gaussian exploration around the deterministic policy."""
    action = actor.apply(actor_params, obs)
    return jnp.clip(action + noise * jax.random.normal(key, action.shape), -1.0, 1.0)


def deterministic_policy_loss(actor: DeterministicActor, actor_params, q_fn, obs: jax.Array) -> jax.Array:
    """-E[Q_1(s, mu(s))]: its gradient is the deterministic policy gradient (Silver et al., 2014)."""
    return -jnp.mean(q_fn(obs, actor.apply(actor_params, obs))[0])


def make_train(config: Config) -> Trainer:
    vec_env = off_policy.make_vec_env(config, make_env)
    actor = DeterministicActor(vec_env.spec.num_actions, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)

    def init_learner(actor_key: jax.Array, critic_key: jax.Array, obs: jax.Array, hp: HParams) -> Learner:
        """Actor and twin critics, their target copies and Adam states."""
        actor_params = actor.init(actor_key, obs)
        critic_params = critic.init(critic_key, obs, jnp.zeros((config.num_envs, actor.action_dim)))
        return Learner(actor_params, critic_params, actor_params, critic_params,
                       optax.adam(hp.actor_lr).init(actor_params), optax.adam(hp.critic_lr).init(critic_params),
                       jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def act(learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """mu(s) (greedy), or mu(s) plus the default exploration noise."""
        if greedy:
            return actor.apply(learner.actor_params, obs)
        return noisy_action(actor, learner.actor_params, obs, key, HParams.exploration_noise)

    def gradient_step(learner: Learner, buffer: replay.ReplayState, key: jax.Array, hp: HParams):
        """Critics every step; actor and targets every `policy_delay` steps (steps 1-2 of the docstring)."""
        sample_key, noise_key = jax.random.split(key)
        batch, discount = off_policy.sample_batch(config, buffer, sample_key, hp.gamma)
        next_action = smoothed_target_action(actor.apply(learner.target_actor_params, batch.next_obs), noise_key, hp)
        next_q = critic.apply(learner.target_critic_params, batch.next_obs, next_action)
        target = jax.lax.stop_gradient(batch.reward + discount * next_q.min(axis=0))
        critic_params, critic_opt_state, (q_loss, q_mean) = optimizer_step(
            optax.adam(hp.critic_lr), lambda p: twin_critic_loss(critic, p, batch.obs, batch.action, target),
            learner.critic_params, learner.critic_opt_state)

        def delayed_update(learner: Learner) -> Learner:
            """The actor's deterministic policy gradient step, then Polyak steps of all targets."""
            q_fn = lambda obs, action: critic.apply(critic_params, obs, action)  # noqa: E731
            actor_params, actor_opt_state, (pi_loss, _) = optimizer_step(
                optax.adam(hp.actor_lr), lambda p: (deterministic_policy_loss(actor, p, q_fn, batch.obs), None),
                learner.actor_params, learner.actor_opt_state)
            return learner._replace(
                actor_params=actor_params, actor_opt_state=actor_opt_state,
                target_actor_params=polyak(learner.target_actor_params, actor_params, hp.tau),
                target_critic_params=polyak(learner.target_critic_params, critic_params, hp.tau),
                actor_loss=pi_loss.astype(learner.actor_loss.dtype))  # float32 also under JAX_ENABLE_X64

        gradient_steps = learner.gradient_steps + 1
        learner = learner._replace(critic_params=critic_params, critic_opt_state=critic_opt_state,
                                   gradient_steps=gradient_steps)
        delayed = is_due(gradient_steps, hp.policy_delay)
        # The delay is a traced HParam, so `cond` skips the actor's work on the other steps in a one-member
        # program; under `vmap` over members XLA turns it into a select of both branches.
        learner = jax.lax.cond(delayed, delayed_update, lambda learner: learner, learner)
        return learner, {"critic_loss": q_loss, "actor_loss": learner.actor_loss, "q_mean": q_mean}

    explore = lambda learner, key, obs, hp: noisy_action(actor, learner.actor_params, obs, key,  # noqa: E731
                                                         hp.exploration_noise)
    return off_policy.make_trainer(config, vec_env, init_learner, explore, gradient_step, act)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("td3", Config, HParams, make_train)


if __name__ == "__main__":
    main()
