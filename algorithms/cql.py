"""Conservative Q-Learning, CQL(H) on SAC (Kumar, Zhou, Tucker & Levine, NeurIPS 2020, arXiv 2006.04779).

    python -m rlzoo.experiments.offline_datasets --env-id Pendulum-v1 --out datasets  # datasets/Pendulum-v1/*.hdf5
    python algorithms/cql.py --dataset datasets/Pendulum-v1/medium.hdf5
    python algorithms/cql.py --lagrange --target-action-gap 5
    python algorithms/cql.py --num-seeds 4 --sweep min-q-weight=1,5,10

Per gradient step, on a uniform minibatch (s, a, r, s') from the dataset, with a SAC actor pi (a Gaussian
squashed by tanh into the action bounds, state-dependent std) and twin critics:

1. Entropy temperature (SAC's automatic tuning): L_alpha = -log(alpha) E[log pi(a~|s) + target_entropy].
2. Actor (SAC): L_pi = E[alpha log pi(a~|s) - min_j Q_j(s, a~)], a~ ~ pi(.|s) reparameterised.
3. Critics: the soft Bellman error on y = r + gamma (1 - term) min_j Q_bar_j(s', a'), a' ~ pi(.|s') (minus
   alpha log pi(a'|s') with `backup_entropy`), plus the CQL(H) regulariser (eq. 4):
   min_q_weight * E_s[log sum_a exp Q_j(s, a) - Q_j(s, a_data)], where the log-sum-exp over the
   continuous actions is estimated by importance sampling (appendix F) from `num_sampled_actions` uniform
   actions (density 1 / range^A) and as many actions of pi at s and at s' (density pi):
   log sum_a exp Q(s, a) ~ logsumexp_i [Q(s, a_i) - log mu(a_i)] over the 3N samples.
   With `lagrange`, the regulariser's weight is min_q_weight * alpha' with alpha' >= 0 learned so that the
   gap E[logsumexp - Q(s, a_data)] stays at `target_action_gap` (eq. 5): L_alpha' = -alpha' (gap - threshold).
4. Target critics: Polyak averaging with `tau`.

Defaults follow the reference code for D4RL locomotion: min-Q weight 5, 10 sampled actions, no entropy
in the backup, actor lr 1e-4, critic lr 3e-4, target entropy -dim(A), gamma 0.99, tau 0.005, 2x256 ReLU
MLPs (the paper uses 3x256), batch 256, Lagrange off.

The training loop and what the run folder's metrics mean are every offline
algorithm's: see `rlzoo.offline` (`env_steps` counts gradient steps).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import datasets
from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.networks import EnsembleQ, TanhGaussianActor, squashed_gaussian
from rlzoo.offline import OfflineConfig, OfflineData, load_offline_data, make_trainer
from rlzoo.updates import polyak


ALPHA_PRIME_MAX = 1e6


@dataclasses.dataclass(frozen=True)
class Config(OfflineConfig):
    """The shared offline settings plus CQL's sampling and regulariser switches."""

    num_sampled_actions: int = 10
    """N: uniform actions, and policy actions at s and at s', each, in the log-sum-exp estimate."""
    lagrange: bool = False
    """Learn the regulariser's weight alpha' so that the CQL gap stays at target_action_gap (CQL eq. 5)."""
    backup_entropy: bool = False
    """Subtract alpha log pi(a'|s') in the critic target (SAC's soft backup)."""

    def __post_init__(self):
        super().__post_init__()
        check(self.num_sampled_actions >= 1, "num_sampled_actions", self.num_sampled_actions, "must be >= 1")


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the entropy temperature and of the Lagrange multiplier alpha'."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics."""
    min_q_weight: float = 5.0
    """Weight of the CQL(H) regulariser (alpha in the paper)."""
    target_action_gap: float = 10.0
    """With --lagrange: the gap E[logsumexp Q - Q(s, a_data)] that alpha' holds (tau in eq. 5)."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "actor_lr": POSITIVE, "critic_lr": POSITIVE, "alpha_lr": POSITIVE, "gamma": UNIT_INTERVAL,
        "tau": Range(0.0, 1.0, low_closed=False), "min_q_weight": NON_NEGATIVE, "target_action_gap": NON_NEGATIVE,
        "init_alpha": POSITIVE,
    }


class Learner(NamedTuple):
    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_alpha: jax.Array  # entropy temperature, log-parameterised
    log_alpha_prime: jax.Array  # Lagrange multiplier of the CQL gap (used with --lagrange)
    actor_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any


class Networks(NamedTuple):
    actor: TanhGaussianActor
    critic: EnsembleQ


def sample_actions(nets: Networks, actor_params: Any, obs: jax.Array, key: jax.Array, bounds: tuple[float, float],
                   num: int = 0) -> tuple[jax.Array, jax.Array]:
    """Actions of pi at `obs` [B, ...] and their log-densities; with `num` > 0 an axis of `num` samples: [B, num, A]."""
    mean, log_std = nets.actor.apply(actor_params, obs)
    if num == 0:
        return squashed_gaussian(mean, log_std, *bounds).sample_and_log_prob(seed=key)
    actions, log_probs = squashed_gaussian(mean, log_std, *bounds).sample_and_log_prob(seed=key, sample_shape=(num,))
    return jnp.swapaxes(actions, 0, 1), jnp.swapaxes(log_probs, 0, 1)


def logsumexp_q(nets: Networks, critic_params: Any, actor_params: Any, batch: datasets.Dataset, key: jax.Array,
                bounds: tuple[float, float], num: int) -> jax.Array:
    """Importance-sampled log sum_a exp Q_j(s, a) [num_critics, B] (CQL appendix F), from 3 * num actions.

    All 3 * num actions of a state are scored by one critic call on [B * 3 num] rows: under `vmap` over seeds,
    three calls on [B, num, ...] inputs cost 1.2x more per seed on a CPU.
    """
    low, high = bounds
    uniform_key, current_key, next_key = jax.random.split(key, 3)
    batch_size, action_dim = batch.actions.shape
    uniform = jax.random.uniform(uniform_key, (batch_size, num, action_dim), minval=low, maxval=high)
    uniform_log_density = jnp.full((batch_size, num), -action_dim * math.log(high - low))
    current, current_log_prob = sample_actions(nets, actor_params, batch.observations, current_key, bounds, num)
    following, following_log_prob = sample_actions(nets, actor_params, batch.next_observations, next_key, bounds, num)
    actions = jnp.concatenate([uniform, current, following], axis=1)  # [B, 3N, A]: all are scored at s
    log_density = jnp.concatenate([uniform_log_density, current_log_prob, following_log_prob], axis=1)  # [B, 3N]
    obs = jnp.repeat(batch.observations, 3 * num, axis=0)  # [B * 3N, obs], row i // 3N is state i
    q = nets.critic.apply(critic_params, obs, jax.lax.stop_gradient(actions.reshape(-1, action_dim)))
    scores = q.reshape(q.shape[0], batch_size, 3 * num) - jax.lax.stop_gradient(log_density)[None]
    chex.assert_shape(scores, (None, batch_size, 3 * num))
    return jax.scipy.special.logsumexp(scores, axis=-1)


def critic_loss(nets: Networks, critic_params: Any, learner: Learner, batch: datasets.Dataset, key: jax.Array,
                bounds: tuple[float, float], config: Config, hp: HParams):
    """Soft Bellman error plus the CQL(H) regulariser, and the Lagrange multiplier's loss (eqs. 4-5)."""
    target_key, cql_key = jax.random.split(key)
    next_action, next_log_prob = sample_actions(nets, learner.actor_params, batch.next_observations, target_key,
                                                bounds)
    next_q = nets.critic.apply(learner.target_critic_params, batch.next_observations, next_action).min(axis=0)
    if config.backup_entropy:
        next_q = next_q - jnp.exp(learner.log_alpha) * next_log_prob
    target = jax.lax.stop_gradient(batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_q)
    q = nets.critic.apply(critic_params, batch.observations, batch.actions)  # [num_critics, B]
    chex.assert_equal_shape((q[0], target))
    bellman = jnp.square(q - target[None]).mean(axis=1).sum()

    gap = (logsumexp_q(nets, critic_params, learner.actor_params, batch, cql_key, bounds,
                       config.num_sampled_actions) - q).mean(axis=1)  # [num_critics]
    if config.lagrange:
        alpha_prime = jax.lax.stop_gradient(jnp.clip(jnp.exp(learner.log_alpha_prime), 0.0, ALPHA_PRIME_MAX))
        regulariser = (alpha_prime * (hp.min_q_weight * gap - hp.target_action_gap)).sum()
    else:
        regulariser = hp.min_q_weight * gap.sum()
    loss = bellman + regulariser
    return loss, {"critic_loss": bellman, "cql_loss": regulariser, "cql_gap": gap.mean(), "q_mean": q.mean(),
                  "gap_per_critic": gap}


def make_train(config: Config, data: OfflineData | None = None) -> Trainer:
    """`data` defaults to `load_offline_data(config.dataset, config.env_id, config.normalize_obs)`."""
    data = data or load_offline_data(config.dataset, config.env_id, config.normalize_obs)
    bounds = data.action_bounds
    nets = Networks(TanhGaussianActor(data.action_dim, config.hidden_sizes, config.activation),
                    EnsembleQ(2, config.hidden_sizes, config.activation))
    target_entropy = -float(data.action_dim)

    def init(key: jax.Array, hp: HParams, dataset: datasets.Dataset) -> Learner:
        actor_key, critic_key = jax.random.split(key)
        obs, action = dataset.observations[:1], dataset.actions[:1]
        actor_params = nets.actor.init(actor_key, obs)
        critic_params = nets.critic.init(critic_key, obs, action)
        log_alphas = (jnp.log(jnp.asarray(hp.init_alpha, jnp.float32)), jnp.zeros((), jnp.float32))
        return Learner(actor_params, critic_params, critic_params, *log_alphas,
                       optax.adam(hp.actor_lr).init(actor_params), optax.adam(hp.critic_lr).init(critic_params),
                       optax.adam(hp.alpha_lr).init(log_alphas))

    def learn(learner: Learner, batch: datasets.Dataset, key: jax.Array, hp: HParams) -> tuple[Learner, dict]:
        actor_key, critic_key = jax.random.split(key)

        def actor_and_temperature_loss(actor_params, log_alpha):
            """SAC's L_pi + L_alpha: each term stops the gradient to the other's parameter."""
            action, log_prob = sample_actions(nets, actor_params, batch.observations, actor_key, bounds)
            q = nets.critic.apply(learner.critic_params, batch.observations, action).min(axis=0)
            alpha = jnp.exp(log_alpha)
            policy_loss = (jax.lax.stop_gradient(alpha) * log_prob - q).mean()
            alpha_loss = -(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy)).mean()
            return policy_loss + alpha_loss, {"actor_loss": policy_loss, "alpha": alpha, "entropy": -log_prob.mean()}

        def alpha_prime_loss(log_alpha_prime, gap):
            alpha_prime = jnp.clip(jnp.exp(log_alpha_prime), 0.0, ALPHA_PRIME_MAX)
            return -(alpha_prime * (hp.min_q_weight * jax.lax.stop_gradient(gap) - hp.target_action_gap)).sum()

        # 1-2. The actor and the temperature, from the same sampled actions.
        (actor_grads, log_alpha_grad), actor_stats = jax.grad(actor_and_temperature_loss, argnums=(0, 1),
                                                              has_aux=True)(learner.actor_params, learner.log_alpha)
        updates, actor_opt_state = optax.adam(hp.actor_lr).update(actor_grads, learner.actor_opt_state)
        actor_params = optax.apply_updates(learner.actor_params, updates)

        # 3. The critics (and alpha' with --lagrange).
        grads, critic_stats = jax.grad(lambda p: critic_loss(nets, p, learner, batch, critic_key, bounds, config, hp),
                                       has_aux=True)(learner.critic_params)
        updates, critic_opt_state = optax.adam(hp.critic_lr).update(grads, learner.critic_opt_state)
        critic_params = optax.apply_updates(learner.critic_params, updates)
        gap = critic_stats.pop("gap_per_critic")
        log_alpha_prime_grad = (jax.grad(alpha_prime_loss)(learner.log_alpha_prime, gap) if config.lagrange
                                else jnp.zeros_like(learner.log_alpha_prime))
        log_alphas = (learner.log_alpha, learner.log_alpha_prime)
        updates, alpha_opt_state = optax.adam(hp.alpha_lr).update((log_alpha_grad, log_alpha_prime_grad),
                                                                  learner.alpha_opt_state)
        log_alpha, log_alpha_prime = optax.apply_updates(log_alphas, updates)

        # 4. Target critics.
        target_critic_params = polyak(learner.target_critic_params, critic_params, hp.tau)
        learner = Learner(actor_params, critic_params, target_critic_params, log_alpha, log_alpha_prime,
                          actor_opt_state, critic_opt_state, alpha_opt_state)
        return learner, {**actor_stats, **critic_stats, "alpha_prime": jnp.exp(log_alpha_prime)}

    def policy(learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """The squashed mean when greedy, else a sample."""
        mean, log_std = nets.actor.apply(learner.actor_params, obs)
        if greedy:
            low, high = bounds
            return (high + low) / 2 + (high - low) / 2 * jnp.tanh(mean)
        return squashed_gaussian(mean, log_std, *bounds).sample(seed=key)

    return make_trainer(config, data, init, learn, policy)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("cql", Config, HParams, make_train)


if __name__ == "__main__":
    main()
