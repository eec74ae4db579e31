"""TD3+BC (Fujimoto & Gu, NeurIPS 2021, arXiv 2106.06860): TD3 with a behaviour-cloning term in the actor loss.

    python -m rlzoo.experiments.offline_datasets --env-id Pendulum-v1 --out datasets  # datasets/Pendulum-v1/*.hdf5
    python algorithms/td3_bc.py --dataset datasets/Pendulum-v1/medium.hdf5
    python algorithms/td3_bc.py --num-seeds 4 --sweep alpha=1,2.5,5

Per gradient step, on a uniform minibatch (s, a, r, s') from the dataset:

1. Twin critics on TD3's target (Fujimoto et al., 2018): a' = clip(pi_bar(s') + clip(eps, -c, c), low, high)
   with eps ~ N(0, sigma^2) (target policy smoothing), y = r + gamma (1 - term) min_j Q_bar_j(s', a'),
   L_Q = sum_j E[(y - Q_j(s, a))^2].
2. Every `policy_delay` steps, the actor (TD3+BC eq. 3):
   L_pi = -lambda E[Q_1(s, pi(s))] + E[(pi(s) - a)^2] with lambda = alpha / E|Q_1(s, a)| (eq. 4, the mean
   over the minibatch, without gradient), then Polyak updates of the target actor and critics with `tau`.

Observations are standardised by the dataset's mean and std (the paper's state normalisation; on by default).
Defaults are the paper's: alpha 2.5, policy noise 0.2 and noise clip 0.5 (times the half range of the actions),
policy delay 2, tau 0.005, gamma 0.99, lr 3e-4, 2x256 ReLU MLPs, batch 256.

The training loop and what the run folder's metrics mean are every offline
algorithm's: see `rlzoo.offline` (`env_steps` counts gradient steps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import datasets
from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.networks import BoundedDeterministicActor, EnsembleQ
from rlzoo.offline import OfflineConfig, OfflineData, load_offline_data, make_trainer
from rlzoo.updates import optimizer_step, polyak, tree_select


@dataclasses.dataclass(frozen=True)
class Config(OfflineConfig):
    """The shared offline settings plus TD3+BC's policy delay, with normalize_obs on by default."""

    normalize_obs: bool = True
    """Standardise observations by the dataset's mean and std (the policy applies the same to raw observations)."""
    policy_delay: int = 2
    """Critic steps per actor (and target) step."""

    def __post_init__(self):
        super().__post_init__()
        check(self.policy_delay >= 1, "policy_delay", self.policy_delay, "must be >= 1")


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 3e-4
    """Adam learning rate of the actor and the critics."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target actor and critics."""
    alpha: float = 2.5
    """Weight of the Q term against behaviour cloning: lambda = alpha / E|Q| (eq. 4)."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise, in units of the actions' half range."""
    noise_clip: float = 0.5
    """Clip of the smoothing noise, in units of the actions' half range."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "tau": Range(0.0, 1.0, low_closed=False), "alpha": NON_NEGATIVE,
        "policy_noise": NON_NEGATIVE, "noise_clip": NON_NEGATIVE,
    }


class Learner(NamedTuple):
    actor_params: Any
    critic_params: Any
    target_actor_params: Any
    target_critic_params: Any
    actor_opt_state: Any
    critic_opt_state: Any
    step: jax.Array  # gradient steps done, for the policy delay


class Networks(NamedTuple):
    actor: BoundedDeterministicActor
    critic: EnsembleQ


def smoothed_target_action(nets: Networks, target_actor_params: Any, next_obs: jax.Array, key: jax.Array,
                           bounds: tuple[float, float], hp: HParams) -> jax.Array:
    """a' = clip(pi_bar(s') + clip(eps, -c, c), low, high), eps ~ N(0, sigma^2): target policy smoothing."""
    low, high = bounds
    half_range = (high - low) / 2
    action = nets.actor.apply(target_actor_params, next_obs)
    noise = jnp.clip(hp.policy_noise * half_range * jax.random.normal(key, action.shape),
                     -hp.noise_clip * half_range, hp.noise_clip * half_range)
    return jnp.clip(action + noise, low, high)


def critic_loss(nets: Networks, critic_params: Any, learner: Learner, batch: datasets.Dataset, key: jax.Array,
                bounds: tuple[float, float], hp: HParams):
    """sum_j E[(r + gamma (1 - term) min_j Q_bar_j(s', a') - Q_j(s, a))^2] with a' smoothed (TD3)."""
    next_action = smoothed_target_action(nets, learner.target_actor_params, batch.next_observations, key, bounds, hp)
    next_q = nets.critic.apply(learner.target_critic_params, batch.next_observations, next_action).min(axis=0)
    target = jax.lax.stop_gradient(batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_q)
    q = nets.critic.apply(critic_params, batch.observations, batch.actions)
    chex.assert_equal_shape((q[0], target))
    loss = jnp.square(q - target[None]).mean(axis=1).sum()
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(nets: Networks, actor_params: Any, critic_params: Any, batch: datasets.Dataset, hp: HParams):
    """-lambda E[Q_1(s, pi(s))] + E[(pi(s) - a)^2], lambda = alpha / E|Q_1(s, pi(s))| without gradient (eqs. 3-4)."""
    action = nets.actor.apply(actor_params, batch.observations)
    q = nets.critic.apply(critic_params, batch.observations, action)[0]
    lam = jax.lax.stop_gradient(hp.alpha / jnp.abs(q).mean())
    bc = jnp.square(action - batch.actions).sum(-1).mean()
    loss = -lam * q.mean() + bc
    return loss, {"actor_loss": loss, "bc_loss": bc, "lambda": lam}


def make_train(config: Config, data: OfflineData | None = None) -> Trainer:
    """`data` defaults to `load_offline_data(config.dataset, config.env_id, config.normalize_obs)`."""
    data = data or load_offline_data(config.dataset, config.env_id, config.normalize_obs)
    bounds = data.action_bounds
    nets = Networks(BoundedDeterministicActor(data.action_dim, *bounds, config.hidden_sizes, config.activation),
                    EnsembleQ(2, config.hidden_sizes, config.activation))

    def init(key: jax.Array, hp: HParams, dataset: datasets.Dataset) -> Learner:
        actor_key, critic_key = jax.random.split(key)
        obs, action = dataset.observations[:1], dataset.actions[:1]
        actor_params = nets.actor.init(actor_key, obs)
        critic_params = nets.critic.init(critic_key, obs, action)
        opt = optax.adam(hp.lr)
        return Learner(actor_params, critic_params, actor_params, critic_params, opt.init(actor_params),
                       opt.init(critic_params), jnp.zeros((), jnp.int32))

    def learn(learner: Learner, batch: datasets.Dataset, key: jax.Array, hp: HParams) -> tuple[Learner, dict]:
        opt = optax.adam(hp.lr)
        critic_params, critic_opt_state, (_, critic_stats) = optimizer_step(
            opt, lambda p: critic_loss(nets, p, learner, batch, key, bounds, hp), learner.critic_params,
            learner.critic_opt_state)
        actor_params, actor_opt_state, (_, actor_stats) = optimizer_step(
            opt, lambda p: actor_loss(nets, p, critic_params, batch, hp), learner.actor_params,
            learner.actor_opt_state)
        target_actor_params = polyak(learner.target_actor_params, actor_params, hp.tau)
        target_critic_params = polyak(learner.target_critic_params, critic_params, hp.tau)

        # The delayed policy step: actor, its optimiser and both targets move together every policy_delay steps.
        delayed = (learner.step + 1) % config.policy_delay == 0
        keep = lambda new, old: tree_select(delayed, new, old)  # noqa: E731
        learner = Learner(keep(actor_params, learner.actor_params), critic_params,
                          keep(target_actor_params, learner.target_actor_params),
                          keep(target_critic_params, learner.target_critic_params),
                          keep(actor_opt_state, learner.actor_opt_state), critic_opt_state, learner.step + 1)
        return learner, {**critic_stats, **actor_stats}

    def policy(learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """The deterministic actor (also when not greedy: TD3+BC evaluates without exploration noise)."""
        return nets.actor.apply(learner.actor_params, obs)

    return make_trainer(config, data, init, learn, policy)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("td3_bc", Config, HParams, make_train)


if __name__ == "__main__":
    main()
