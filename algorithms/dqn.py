"""DQN and its family: Double, Dueling, n-step, and regression or classification value losses.

    python algorithms/dqn.py                                   # CartPole-v1
    python algorithms/dqn.py --loss c51 --double --dueling --n-step 3
    python algorithms/dqn.py --env-id Breakout-MinAtar --loss hl_gauss --v-min 0 --v-max 100

Per update: `train_every` vectorised steps of epsilon-greedy acting from `num_envs`
environments into a replay buffer held in the training state, then one gradient
step on a sampled minibatch once `learning_starts` steps have been collected.
Targets (Mnih et al., 2015): y = R^(n) + gamma^m (1 - term) Q_bar(s', a*), with
a* = argmax Q_bar(s', .) or, with `double`, argmax Q(s', .) (van Hasselt et al.,
2016). The loss is MSE or Huber regression on y, C51's cross-entropy against the
projected target distribution (Bellemare et al., 2017), or cross-entropy against
HL-Gauss / two-hot encodings of y (Farebrother et al., 2024). The target network
follows the online one every `target_period` updates by Polyak averaging with
`tau` (tau = 1: a hard copy).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import distributional as dist
from rlzoo import replay, value_based
from rlzoo.env_adapter import VecEnv, episode_metrics
from rlzoo.envs import make_env
from rlzoo.networks import QNetwork
from rlzoo.trainer import Range, Trainer, check
from rlzoo.updates import is_due, optimizer_step, polyak, tree_select
from rlzoo.value_based import EpsilonGreedyHParams, ReplayConfig, TrainState

LOSSES = ("mse", "huber", "c51", "hl_gauss", "two_hot")


@dataclasses.dataclass(frozen=True)
class Config(ReplayConfig):
    """Static settings: they fix shapes and the compiled program (the CLI)."""

    n_step: int = 1
    """n of the n-step return."""
    double: bool = False
    """Double DQN: choose the next action with the online network."""
    dueling: bool = False
    """Dueling head."""
    loss: Literal["mse", "huber", "c51", "hl_gauss", "two_hot"] = "mse"
    """Value loss: regression (mse, huber) or classification (c51, hl_gauss, two_hot)."""
    num_atoms: int = 51
    """Atoms or bins of the classification losses."""
    v_min: float = 0.0
    """Lowest value of the support (classification losses)."""
    v_max: float = 100.0
    """Highest value of the support (classification losses; 100 bounds CartPole at gamma 0.99)."""

    def __post_init__(self):
        check(self.n_step >= 1, "n_step", self.n_step, "must be >= 1")
        check(self.loss in LOSSES, "loss", self.loss, f"one of {', '.join(LOSSES)}")
        check(self.v_min < self.v_max, "v_min", self.v_min, f"must be < v_max ({self.v_max})")
        check(self.num_atoms >= 2, "num_atoms", self.num_atoms, "must be >= 2")
        super().__post_init__()
        check(self.n_step <= self.buffer_size // self.num_envs, "n_step", self.n_step,
              f"must be <= the buffer's rows per env ({self.buffer_size // self.num_envs} = buffer_size // "
              f"num_envs): a return cannot reach further back than the buffer holds")

    @property
    def distributional(self) -> bool:
        return self.loss in ("c51", "hl_gauss", "two_hot")


@struct.dataclass
class HParams(EpsilonGreedyHParams):
    """The epsilon-greedy learner's numbers plus the target update's; `vmap` sweeps over any of them."""

    tau: float = 1.0
    """Polyak step of the target update (1: hard copy)."""
    target_period: float = 50.0
    """Updates between target-network updates (50 updates x 10 envs = CleanRL's 500 env steps)."""

    BOUNDS: ClassVar[dict[str, Range]] = {**EpsilonGreedyHParams.BOUNDS, "tau": Range(0.0, 1.0, low_closed=False),
                                          "target_period": Range(1.0)}


def make_env_and_network(config: Config) -> tuple[VecEnv, QNetwork]:
    env = make_env(config.env_id)
    check(env.spec.discrete, "env_id", config.env_id, "DQN needs discrete actions")
    atoms = config.num_atoms if config.distributional else 1
    network = QNetwork(env.spec.obs_shape, env.spec.num_actions, atoms, config.dueling, config.hidden_sizes,
                       config.activation)
    return VecEnv(env, config.num_envs), network


def make_value_head(config: Config) -> tuple[jax.Array | None, Any]:
    """The support points of a classification head, and `to_q(output) -> Q-values [..., A]`."""
    if not config.distributional:
        return None, lambda out: out
    if config.loss == "c51":
        points = dist.make_support(config.v_min, config.v_max, config.num_atoms)
    else:
        points = dist.bin_centres(config.v_min, config.v_max, config.num_atoms)
    return points, lambda logits: dist.expected_value(logits, points)


def td_loss(config: Config, network: QNetwork, params, target_params, sample: replay.NStepSample, hp: HParams):
    """The value loss on an n-step replay sample; returns (loss, mean Q of the taken actions)."""
    points, to_q = make_value_head(config)
    first, next_obs = sample.first, sample.last.next_obs
    out = network.apply(params, first.obs)
    next_target_out = network.apply(target_params, next_obs)
    selector = network.apply(params, next_obs) if config.double else next_target_out
    next_action = jnp.argmax(to_q(selector), axis=-1)
    taken = jnp.take_along_axis(out, first.action.reshape(-1, 1, *([1] * (out.ndim - 2))), axis=1).squeeze(1)
    next_taken = jnp.take_along_axis(next_target_out, next_action.reshape(-1, 1, *([1] * (out.ndim - 2))),
                                     axis=1).squeeze(1)
    next_taken = jax.lax.stop_gradient(next_taken)
    if config.loss == "c51":
        target_values = sample.returns[:, None] + sample.discount[:, None] * points[None, :]
        target = dist.categorical_projection(target_values, jax.nn.softmax(next_taken), points)
        losses = dist.cross_entropy(taken, target)
        q_taken = dist.expected_value(taken, points)
    else:
        y = sample.returns + sample.discount * to_q(next_taken)
        if config.loss == "mse":
            losses, q_taken = 0.5 * jnp.square(taken - y), taken
        elif config.loss == "huber":
            losses, q_taken = optax.huber_loss(taken, y), taken
        else:
            target = (dist.hl_gauss(y, config.v_min, config.v_max, config.num_atoms) if config.loss == "hl_gauss"
                      else dist.two_hot(y, points))
            losses, q_taken = dist.cross_entropy(taken, target), dist.expected_value(taken, points)
    return jnp.mean(sample.weights * losses), jnp.mean(q_taken)


def make_train(config: Config) -> Trainer:
    vec_env, network = make_env_and_network(config)
    _, to_q = make_value_head(config)
    num_updates = config.num_updates

    def init(key: jax.Array, hp: HParams) -> TrainState:
        return value_based.init_state(vec_env, config, key, network.init, value_based.make_optimizer(hp))

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool, eps=0.0) -> jax.Array:
        """Epsilon-greedy on Q(obs, .); greedy when evaluating."""
        q_values = to_q(network.apply(state.params, obs))
        return value_based.greedy_or_epsilon_greedy(q_values, key, greedy, eps, vec_env.spec.num_actions)

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        eps = value_based.epsilon(hp, state.update_index, num_updates)
        state = value_based.collect(vec_env, act, state, rollout_key, eps, config.train_every)

        sample = replay.sample_n_step(state.buffer, learn_key, config.batch_size, config.n_step, hp.gamma)
        params, opt_state, (loss, q_mean) = optimizer_step(
            value_based.make_optimizer(hp), lambda p: td_loss(config, network, p, state.target_params, sample, hp),
            state.params, state.opt_state)
        learning = state.update_index >= config.learning_starts_updates
        params, opt_state = tree_select(learning, (params, opt_state), (state.params, state.opt_state))
        update_index = state.update_index + 1
        refresh = learning & is_due(update_index, hp.target_period)
        target_params = tree_select(refresh, polyak(state.target_params, params, hp.tau),
                                    state.target_params)
        metrics = {"env_steps": update_index * config.steps_per_update, **episode_metrics(state.env_state),
                   "loss": loss, "q_mean": q_mean, "epsilon": eps}
        state = state._replace(params=params, target_params=target_params, opt_state=opt_state, key=key,
                               update_index=update_index)
        return state, metrics

    return value_based.make_trainer(config, vec_env, init, update, act)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("dqn", Config, HParams, make_train)


if __name__ == "__main__":
    main()
