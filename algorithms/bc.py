"""Behaviour cloning: maximum likelihood of the dataset's actions under a Gaussian policy.

    python -m rlzoo.experiments.offline_datasets --env-id Pendulum-v1 --out datasets  # datasets/Pendulum-v1/*.hdf5
    python algorithms/bc.py --dataset datasets/Pendulum-v1/medium.hdf5
    python algorithms/bc.py --dataset hopper-medium-v2.hdf5 --env-id none   # a D4RL file, no online evaluation

Per gradient step: a uniform minibatch (s, a) from the dataset and one Adam step
on -E[log pi(a|s)], with pi a Gaussian whose mean is squashed into the action
bounds by tanh and whose log-std is a state-independent parameter (the policy of
`iql.py`, so that the two differ only in their weighting of the data). The
greedy policy, used for evaluation, is the mean.

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
from rlzoo.trainer import POSITIVE, Range, Trainer
from rlzoo.networks import GaussianActor
from rlzoo.offline import OfflineConfig, OfflineData, load_offline_data, make_trainer
from rlzoo.updates import optimizer_step


@dataclasses.dataclass(frozen=True)
class Config(OfflineConfig):
    """The shared offline settings; BC adds none."""


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 3e-4
    """Adam learning rate."""

    BOUNDS: ClassVar[dict[str, Range]] = {"lr": POSITIVE}


class Learner(NamedTuple):
    params: Any
    opt_state: Any


def make_actor(config: Config, data: OfflineData) -> GaussianActor:
    low, high = data.action_bounds
    return GaussianActor(data.action_dim, low, high, config.hidden_sizes, config.activation)


def bc_loss(actor: GaussianActor, params: Any, batch: datasets.Dataset) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-E[log pi(a|s)] over the minibatch."""
    dist = actor.apply(params, batch.observations)
    log_prob = dist.log_prob(batch.actions)
    loss = -log_prob.mean()
    return loss, {"actor_loss": loss, "action_mse": jnp.square(dist.mean() - batch.actions).mean()}


def make_train(config: Config, data: OfflineData | None = None) -> Trainer:
    """`data` defaults to `load_offline_data(config.dataset, config.env_id, config.normalize_obs)`."""
    data = data or load_offline_data(config.dataset, config.env_id, config.normalize_obs)
    actor = make_actor(config, data)

    def init(key: jax.Array, hp: HParams, dataset: datasets.Dataset) -> Learner:
        params = actor.init(key, dataset.observations[:1])
        return Learner(params, optax.adam(hp.lr).init(params))

    def learn(learner: Learner, batch: datasets.Dataset, key: jax.Array, hp: HParams) -> tuple[Learner, dict]:
        params, opt_state, (_, stats) = optimizer_step(optax.adam(hp.lr), lambda p: bc_loss(actor, p, batch),
                                                       learner.params, learner.opt_state)
        return Learner(params, opt_state), stats

    def policy(learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        dist = actor.apply(learner.params, obs)
        return dist.mean() if greedy else dist.sample(seed=key)

    return make_trainer(config, data, init, learn, policy)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("bc", Config, HParams, make_train)


if __name__ == "__main__":
    main()
