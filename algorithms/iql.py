"""Implicit Q-Learning (Kostrikov, Nair & Levine, ICLR 2022): offline RL without querying unseen actions.

    python -m rlzoo.experiments.offline_datasets --env-id Pendulum-v1 --out datasets  # datasets/Pendulum-v1/*.hdf5
    python algorithms/iql.py --dataset datasets/Pendulum-v1/medium.hdf5
    python algorithms/iql.py --num-seeds 4 --sweep expectile=0.7,0.9 beta=3,10

Per gradient step, on a uniform minibatch (s, a, r, s') from the dataset:

1. V: expectile regression on the target critics, L_V = E[L2_tau(min_j Q_bar_j(s, a) - V(s))]
   with L2_tau(u) = |tau - 1(u < 0)| u^2 (paper eq. 5); tau > 0.5 makes V an upper
   expectile of Q over the dataset's actions, a soft maximum over in-support actions.
2. Policy: advantage-weighted regression (eq. 7), L_pi = -E[min(exp(beta (Q_bar(s, a) - V(s))), w_max) log pi(a|s)].
3. Twin Q: L_Q = sum_j E[(r + gamma (1 - term) V(s') - Q_j(s, a))^2] (eq. 6): the target uses V,
   never an action the dataset does not hold.
4. Target critics: Polyak averaging with `tau`.

Defaults are the paper's locomotion settings: expectile 0.7, temperature beta 3,
tau 0.005, gamma 0.99, lr 3e-4 for all three networks (cosine decay for the
policy), 2x256 ReLU MLPs, batch 256, rewards scaled by 1000 / (max - min episode
return in the dataset), weights clipped at 100.

The training loop and what the run folder's metrics mean are every offline
algorithm's: see `rlzoo.offline` (`env_steps` counts gradient steps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import datasets
from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer
from rlzoo.networks import EnsembleQ, GaussianActor, StateValue
from rlzoo.offline import OfflineConfig, OfflineData, load_offline_data, make_trainer
from rlzoo.updates import optimizer_step, polyak


@dataclasses.dataclass(frozen=True)
class Config(OfflineConfig):
    """The shared offline settings plus IQL's reward scaling and actor schedule."""

    scale_rewards: bool = True
    """Multiply rewards by 1000 / (max - min episode return in the dataset), as the paper does for locomotion."""
    cosine_actor_lr: bool = True
    """Decay the policy's learning rate to 0 over total_updates with a cosine schedule, as the reference code does."""


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 3e-4
    """Adam learning rate of the policy, V and Q."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics."""
    expectile: float = 0.7
    """Expectile of the value regression (0.5: the mean; towards 1: the maximum over dataset actions)."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights."""
    max_weight: float = 100.0
    """Clip of the advantage weights exp(beta * A)."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "tau": Range(0.0, 1.0, low_closed=False),
        "expectile": Range(0.0, 1.0, low_closed=False, high_closed=False), "beta": NON_NEGATIVE,
        "max_weight": POSITIVE,
    }


class Learner(NamedTuple):
    actor_params: Any
    value_params: Any
    critic_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    value_opt_state: Any
    critic_opt_state: Any


class Networks(NamedTuple):
    actor: GaussianActor
    value: StateValue
    critic: EnsembleQ


def expectile_loss(diff: jax.Array, expectile: jax.Array) -> jax.Array:
    """L2_tau(u) = |tau - 1(u < 0)| u^2 (IQL eq. 5), elementwise."""
    weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
    return weight * jnp.square(diff)


def value_loss(nets: Networks, value_params: Any, target_q: jax.Array, batch: datasets.Dataset, hp: HParams):
    """E[L2_tau(min_j Q_bar_j(s, a) - V(s))] (eq. 5); `target_q` is min_j Q_bar_j(s, a)."""
    v = nets.value.apply(value_params, batch.observations)
    loss = expectile_loss(target_q - v, hp.expectile).mean()
    return loss, {"value_loss": loss, "v_mean": v.mean()}


def advantage_weights(nets: Networks, value_params: Any, target_q: jax.Array, batch: datasets.Dataset,
                      hp: HParams) -> jax.Array:
    """min(exp(beta (min_j Q_bar_j(s, a) - V(s))), max_weight), without gradient (eq. 7)."""
    v = nets.value.apply(value_params, batch.observations)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(hp.beta * (target_q - v)), hp.max_weight))


def actor_loss(nets: Networks, actor_params: Any, weights: jax.Array, batch: datasets.Dataset):
    """-E[w log pi(a|s)]: advantage-weighted regression (eq. 7)."""
    log_prob = nets.actor.apply(actor_params, batch.observations).log_prob(batch.actions)
    loss = -(weights * log_prob).mean()
    return loss, {"actor_loss": loss, "weight_mean": weights.mean()}


def critic_loss(nets: Networks, critic_params: Any, value_params: Any, batch: datasets.Dataset, reward_scale: float,
                hp: HParams):
    """sum_j E[(r + gamma (1 - term) V(s') - Q_j(s, a))^2] (eq. 6)."""
    next_v = nets.value.apply(value_params, batch.next_observations)
    target = reward_scale * batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_v
    q = nets.critic.apply(critic_params, batch.observations, batch.actions)
    loss = jnp.square(q - jax.lax.stop_gradient(target)[None]).mean(axis=1).sum()
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def reward_scale_of(dataset: datasets.Dataset) -> float:
    """1000 / (max - min episode return), IQL's locomotion reward scaling (1 if fewer than two episodes)."""
    returns = datasets.episode_returns(dataset)
    spread = float(returns.max() - returns.min()) if returns.size >= 2 else 0.0
    return 1000.0 / spread if spread > 0 else 1.0


def make_train(config: Config, data: OfflineData | None = None) -> Trainer:
    """`data` defaults to `load_offline_data(config.dataset, config.env_id, config.normalize_obs)`."""
    data = data or load_offline_data(config.dataset, config.env_id, config.normalize_obs)
    low, high = data.action_bounds
    nets = Networks(GaussianActor(data.action_dim, low, high, config.hidden_sizes, config.activation),
                    StateValue(config.hidden_sizes, config.activation),
                    EnsembleQ(2, config.hidden_sizes, config.activation))
    reward_scale = reward_scale_of(data.dataset) if config.scale_rewards else 1.0

    def optimizers(hp: HParams) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
        actor_lr = optax.cosine_decay_schedule(hp.lr, config.total_updates) if config.cosine_actor_lr else hp.lr
        return optax.adam(actor_lr), optax.adam(hp.lr)

    def init(key: jax.Array, hp: HParams, dataset: datasets.Dataset) -> Learner:
        actor_key, value_key, critic_key = jax.random.split(key, 3)
        obs, action = dataset.observations[:1], dataset.actions[:1]
        actor_params = nets.actor.init(actor_key, obs)
        value_params = nets.value.init(value_key, obs)
        critic_params = nets.critic.init(critic_key, obs, action)
        actor_opt, opt = optimizers(hp)
        return Learner(actor_params, value_params, critic_params, critic_params, actor_opt.init(actor_params),
                       opt.init(value_params), opt.init(critic_params))

    def learn(learner: Learner, batch: datasets.Dataset, key: jax.Array, hp: HParams) -> tuple[Learner, dict]:
        actor_opt, opt = optimizers(hp)

        target_q = nets.critic.apply(learner.target_critic_params, batch.observations, batch.actions).min(axis=0)
        value_params, value_opt_state, (_, value_stats) = optimizer_step(
            opt, lambda p: value_loss(nets, p, target_q, batch, hp), learner.value_params, learner.value_opt_state)
        weights = advantage_weights(nets, value_params, target_q, batch, hp)
        actor_params, actor_opt_state, (_, actor_stats) = optimizer_step(
            actor_opt, lambda p: actor_loss(nets, p, weights, batch), learner.actor_params, learner.actor_opt_state)
        critic_params, critic_opt_state, (_, critic_stats) = optimizer_step(
            opt, lambda p: critic_loss(nets, p, value_params, batch, reward_scale, hp),
            learner.critic_params, learner.critic_opt_state)
        target_critic_params = polyak(learner.target_critic_params, critic_params, hp.tau)
        learner = Learner(actor_params, value_params, critic_params, target_critic_params, actor_opt_state,
                          value_opt_state, critic_opt_state)
        return learner, {**value_stats, **actor_stats, **critic_stats}

    def policy(learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        dist = nets.actor.apply(learner.actor_params, obs)
        return dist.mean() if greedy else dist.sample(seed=key)

    return make_trainer(config, data, init, learn, policy)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("iql", Config, HParams, make_train)


if __name__ == "__main__":
    main()
