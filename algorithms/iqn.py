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

This file implements the separate-networks variant: the K networks are one
parameter tree stacked on a leading axis and evaluated with `vmap`. All start
from the same initial parameters as DQN's network (our choice, so K = 1 is
exactly DQN). Adam's moments stay with their slot when the window rolls.
Acting, replay, exploration and the value head come from `dqn.py`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import replay
from rlzoo.algorithms import dqn
from rlzoo.config import POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.env_adapter import mean_last_episode_length, mean_last_episode_return


@dataclasses.dataclass(frozen=True)
class Config(dqn.Config):
    """DQN's static settings plus the number K of online networks."""

    num_heads: int = 3
    """K: Bellman iterations learned at once (K = 1 is DQN)."""

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


def iterated_loss(config: Config, network, params, target_params, sample: replay.NStepSample):
    """Sum over k of the TD loss of online network k against frozen network k-1 (eq. 3)."""
    first, next_obs = sample.first, sample.last.next_obs
    q = jax.vmap(lambda p: network.apply(p, first.obs))(params)  # [K, B, A]
    next_q_bar = jax.vmap(lambda p: network.apply(p, next_obs))(target_params)  # [K, B, A]
    targets = jax.lax.stop_gradient(sample.returns + sample.discount * next_q_bar.max(axis=-1))  # [K, B]
    taken = jnp.take_along_axis(q, first.action[None, :, None], axis=-1).squeeze(-1)  # [K, B]
    errors = 0.5 * jnp.square(taken - targets) if config.loss == "mse" else optax.huber_loss(taken, targets)
    return jnp.sum(jnp.mean(sample.weights * errors, axis=-1)), jnp.mean(taken)


def make_train(config: Config) -> Trainer:
    vec_env, network = dqn.make_env_and_network(config)
    num_heads, num_updates = config.num_heads, config.num_updates
    capacity = config.buffer_size // config.num_envs
    learning_starts_updates = config.learning_starts // config.steps_per_update
    stack = lambda tree: jax.tree.map(lambda x: jnp.repeat(x[None], num_heads, axis=0), tree)  # noqa: E731

    def make_optimizer(hp: HParams) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.lr))

    def init(key: jax.Array, hp: HParams) -> dqn.TrainState:
        key, net_key, env_key = jax.random.split(key, 3)
        env_state, obs = vec_env.reset(env_key)
        params = stack(network.init(net_key, obs))
        example = dqn.Transition(obs[0], jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros((), bool),
                                 jnp.zeros((), bool), obs[0])
        buffer = replay.init(example, capacity, config.num_envs)
        return dqn.TrainState(params, params, make_optimizer(hp).init(params), buffer, env_state, obs, key,
                              jnp.zeros((), jnp.int32))

    def act(state, key, obs, greedy: bool, eps=0.0):
        """Epsilon-greedy on one online network drawn uniformly (greedy: network K, the newest iteration)."""
        if greedy or num_heads == 1:
            head = num_heads - 1
        else:
            key, head_key = jax.random.split(key)
            head = jax.random.randint(head_key, (), 0, num_heads)
        q_values = network.apply(jax.tree.map(lambda x: x[head], state.params), obs)
        return jnp.argmax(q_values, axis=-1) if greedy else dqn.epsilon_greedy(key, q_values, eps,
                                                                                vec_env.spec.num_actions)

    def env_step(carry, key):
        state, eps = carry
        act_key, env_key = jax.random.split(key)
        action = act(state, act_key, state.obs, False, eps)
        env_state, ts = vec_env.step(env_key, state.env_state, action)
        transition = dqn.Transition(state.obs, action, ts.reward, ts.terminated, ts.truncated, ts.final_obs)
        return (state._replace(env_state=env_state, obs=ts.obs, buffer=replay.add(state.buffer, transition)), eps), None

    def update(state: dqn.TrainState, hp: HParams):
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        eps = dqn.epsilon(hp, state.update_index, num_updates)
        (state, _), _ = jax.lax.scan(env_step, (state, eps), jax.random.split(rollout_key, config.train_every))

        sample = replay.sample_n_step(state.buffer, learn_key, config.batch_size, config.n_step, hp.gamma)
        (loss, q_mean), grads = jax.value_and_grad(
            lambda p: iterated_loss(config, network, p, state.target_params, sample), has_aux=True)(state.params)
        updates, opt_state = make_optimizer(hp).update(grads, state.opt_state, state.params)
        learning = state.update_index >= learning_starts_updates
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(learning, n, o), new, old)  # noqa: E731
        params = keep(optax.apply_updates(state.params, updates), state.params)
        opt_state = keep(opt_state, state.opt_state)

        update_index = state.update_index + 1
        roll = learning & (update_index % jnp.asarray(hp.roll_period).astype(jnp.int32) == 0)
        follow = learning & (update_index % jnp.asarray(hp.target_period).astype(jnp.int32) == 0)
        shift = lambda x: jnp.concatenate([x[1:], x[-1:]])  # noqa: E731  Q_k <- Q_{k+1}, the last keeps its weights
        rolled_targets = jax.tree.map(lambda t, p: t.at[0].set(p[0]), state.target_params, params)  # Q_bar_0 <- Q_1
        params = jax.tree.map(lambda p: jnp.where(roll, shift(p), p), params)
        target_params = jax.tree.map(lambda r, t: jnp.where(roll, r, t), rolled_targets, state.target_params)
        followed = jax.tree.map(lambda t, p: t.at[1:].set(p[:-1]), target_params, params)  # Q_bar_k <- Q_k
        target_params = jax.tree.map(lambda f, t: jnp.where(follow, f, t), followed, target_params)
        metrics = {
            "env_steps": update_index * config.steps_per_update,
            "episode_return": mean_last_episode_return(state.env_state),
            "episode_length": mean_last_episode_length(state.env_state),
            "loss": loss, "q_mean": q_mean, "epsilon": eps,
        }
        return state._replace(params=params, target_params=target_params, opt_state=opt_state, key=key,
                              update_index=update_index), metrics

    def act_for_evaluation(state, key, obs, greedy):
        return act(state, key, obs, True) if greedy else act(state, key, obs, False, 0.05)

    return Trainer(init, update, num_updates, config.steps_per_update, act_for_evaluation, vec_env.env)


def main() -> None:
    from rlzoo.experiment import run_cli

    run_cli("iqn", Config, HParams, make_train)


if __name__ == "__main__":
    main()
