"""Iterated Q-Network, i-QN (Vincent et al., TMLR 2025, arXiv 2403.02107) — not implicit quantile networks.

    python algorithms/iqn.py                       # CartPole-v1, K = 3 heads
    python algorithms/iqn.py --num-heads 5 --target-period 10 --roll-period 200

DQN learns one Bellman iteration at a time: Q regresses on the target of a frozen
Q_bar, which follows Q every few thousand steps. i-QN learns K consecutive
iterations at once. With K online networks Q_1..Q_K and frozen targets
Q_bar_0..Q_bar_{K-1}, the loss (paper eq. 3) is

    L = sum_k E[(r + gamma^m (1 - term) max_a' Q_bar_{k-1}(s', a') - Q_k(s, a))^2],

on n-step replay samples. Every D updates (`target_period`) the targets follow:
Q_bar_k <- Q_k for k < K. Every T updates (`roll_period`, a multiple of D) the
window rolls: Q_bar_0 <- Q_1 and Q_k <- Q_{k+1}; the last network keeps its
weights. Acting is epsilon-greedy on one online network drawn uniformly per step.
With K = 1 this is DQN with a hard target update every T updates (tested: equal
parameters from the same seed).

Two variants, as in the official code: separate networks (default), one
parameter tree stacked on a leading axis of K and evaluated with `vmap`, all
starting from DQN's initial parameters (our choice, so K = 1 is exactly DQN);
and `--shared-torso`, one torso with K + 1 linear heads where head 0 holds
Q_bar_0, the targets are a full copy of the network refreshed every D updates,
and rolling shifts the heads. Adam's moments stay with their slot when the
window rolls.
Acting, replay, exploration and the value head come from `dqn.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import iterated, replay, value_based
from rlzoo.algorithms import dqn
from rlzoo.env_adapter import episode_metrics
from rlzoo.networks import QNetwork, make_torso, orthogonal_dense
from rlzoo.trainer import Range, Trainer, check
from rlzoo.updates import is_due, optimizer_step, tree_select
from rlzoo.value_based import TrainState


@dataclasses.dataclass(frozen=True)
class Config(dqn.Config):
    """DQN's static settings plus the number K of online networks."""

    num_heads: int = 3
    """K: Bellman iterations learned at once (K = 1 is DQN)."""
    shared_torso: bool = False
    """One torso with K + 1 heads (head 0 holds Q_bar_0) instead of K separate networks."""

    def __post_init__(self):
        super().__post_init__()
        check(self.num_heads >= 1, "num_heads", self.num_heads, "K must be >= 1")
        check(self.loss in ("mse", "huber"), "loss", self.loss, "i-QN here supports mse or huber")


@struct.dataclass
class HParams(dqn.HParams):
    """DQN's numbers; `target_period` is D and `roll_period` is T."""

    target_period: float = 10.0
    """D: updates between Q_bar_k <- Q_k."""
    roll_period: float = 50.0
    """T: updates between rolls of the window (a multiple of D)."""

    BOUNDS: ClassVar[dict[str, Range]] = {**dqn.HParams.BOUNDS, "roll_period": Range(1.0)}

    def check_relations(self, label: str = "") -> None:
        check(float(self.roll_period) % float(self.target_period) == 0, f"{label}roll_period", self.roll_period,
              f"T must be a multiple of target_period D={self.target_period}")


class MultiHeadQNetwork(nn.Module):
    """A shared torso and `num_heads` linear heads: Q-values [..., num_heads, num_actions]."""

    obs_shape: tuple[int, ...]
    num_actions: int
    num_heads: int
    hidden_sizes: tuple[int, ...] = (120, 84)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        features = make_torso(self.obs_shape, self.hidden_sizes, self.activation)(obs)
        out = orthogonal_dense(self.num_heads * self.num_actions, gain=1.0, name="heads")(features)
        return out.reshape(*features.shape[:-1], self.num_heads, self.num_actions)


@dataclasses.dataclass(frozen=True)
class Iterations:
    """How the K online networks Q_1..Q_K and targets Q_bar_0..Q_bar_{K-1} are stored, read and moved."""

    online_q: Any  # (params, obs) -> [K, B, A], Q_1..Q_K
    target_q: Any  # (target_params, obs) -> [K, B, A], Q_bar_0..Q_bar_{K-1}
    head_q: Any  # (params, obs, k) -> [B, A], Q_{k+1}
    follow: Any  # (target_params, params) -> target_params after Q_bar_k <- Q_k, k >= 1
    roll: Any  # (target_params, params) -> (target_params, params) after the window rolls


def separate_networks(network: QNetwork) -> Iterations:
    """K networks stacked on a leading axis; targets likewise."""
    apply_all = lambda params, obs: jax.vmap(lambda p: network.apply(p, obs))(params)  # noqa: E731
    return Iterations(
        online_q=apply_all, target_q=apply_all,
        head_q=lambda params, obs, k: network.apply(jax.tree.map(lambda x: x[k], params), obs),
        follow=iterated.follow, roll=iterated.roll)


def shared_torso(network: MultiHeadQNetwork) -> Iterations:
    """One network with heads 0..K: online reads heads 1..K, targets read a full copy's heads 0..K-1."""
    num_actions = network.num_actions

    def roll(target, params):
        def shift_heads(path, x):
            if any(getattr(k, "key", None) == "heads" for k in path):
                heads = x.reshape(*x.shape[:-1], network.num_heads, num_actions)
                return iterated.shift(heads, axis=-2).reshape(x.shape)
            return x
        return target, jax.tree_util.tree_map_with_path(shift_heads, params)

    return Iterations(
        online_q=lambda params, obs: jnp.moveaxis(network.apply(params, obs)[..., 1:, :], -2, 0),
        target_q=lambda params, obs: jnp.moveaxis(network.apply(params, obs)[..., :-1, :], -2, 0),
        head_q=lambda params, obs, k: network.apply(params, obs)[..., k + 1, :],
        follow=lambda target, params: params,
        roll=roll)


def iterated_loss(config: Config, iterations: Iterations, params, target_params, sample: replay.NStepSample):
    """Sum over k of the TD loss of online network k against frozen network k-1 (eq. 3)."""
    first, next_obs = sample.first, sample.last.next_obs
    q = iterations.online_q(params, first.obs)  # [K, B, A]
    next_q_bar = iterations.target_q(target_params, next_obs)  # [K, B, A]
    targets = jax.lax.stop_gradient(sample.returns + sample.discount * next_q_bar.max(axis=-1))  # [K, B]
    taken = jnp.take_along_axis(q, first.action[None, :, None], axis=-1).squeeze(-1)  # [K, B]
    errors = 0.5 * jnp.square(taken - targets) if config.loss == "mse" else optax.huber_loss(taken, targets)
    return jnp.sum(jnp.mean(sample.weights * errors, axis=-1)), jnp.mean(taken)


def make_train(config: Config) -> Trainer:
    vec_env, network = dqn.make_env_and_network(config)
    num_heads, num_updates = config.num_heads, config.num_updates
    if config.shared_torso:
        network = MultiHeadQNetwork(vec_env.spec.obs_shape, vec_env.spec.num_actions, num_heads + 1,
                                    config.hidden_sizes, config.activation)
    iterations = shared_torso(network) if config.shared_torso else separate_networks(network)

    def init_params(key: jax.Array, obs: jax.Array):
        """One network with K + 1 heads, or K copies of one network's initialisation."""
        return network.init(key, obs) if config.shared_torso else iterated.stack(network.init(key, obs), num_heads)

    def init(key: jax.Array, hp: HParams) -> TrainState:
        return value_based.init_state(vec_env, config, key, init_params, value_based.make_optimizer(hp))

    def act(state, key, obs, greedy: bool, eps=0.0):
        """Epsilon-greedy on one online network drawn uniformly (greedy: network K, the newest iteration)."""
        if greedy or num_heads == 1:
            head = num_heads - 1
        else:
            key, head_key = jax.random.split(key)
            head = jax.random.randint(head_key, (), 0, num_heads)
        q_values = iterations.head_q(state.params, obs, head)
        return value_based.greedy_or_epsilon_greedy(q_values, key, greedy, eps, vec_env.spec.num_actions)

    def update(state: TrainState, hp: HParams):
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        eps = value_based.epsilon(hp, state.update_index, num_updates)
        state = value_based.collect(vec_env, act, state, rollout_key, eps, config.train_every)

        sample = replay.sample_n_step(state.buffer, learn_key, config.batch_size, config.n_step, hp.gamma)
        params, opt_state, (loss, q_mean) = optimizer_step(
            value_based.make_optimizer(hp), lambda p: iterated_loss(config, iterations, p, state.target_params, sample),
            state.params, state.opt_state)
        learning = state.update_index >= config.learning_starts_updates
        params, opt_state = tree_select(learning, (params, opt_state), (state.params, state.opt_state))

        update_index = state.update_index + 1
        target_params, params = iterated.advance(
            state.target_params, params, learning & is_due(update_index, hp.roll_period),
            learning & is_due(update_index, hp.target_period), iterations.roll, iterations.follow)
        metrics = {"env_steps": update_index * config.steps_per_update, **episode_metrics(state.env_state),
                   "loss": loss, "q_mean": q_mean, "epsilon": eps}
        return state._replace(params=params, target_params=target_params, opt_state=opt_state, key=key,
                              update_index=update_index), metrics

    return value_based.make_trainer(config, vec_env, init, update, act)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("iqn", Config, HParams, make_train)


if __name__ == "__main__":
    main()
