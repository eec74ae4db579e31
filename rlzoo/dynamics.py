"""A probabilistic ensemble dynamics model, as in PETS (Chua et al., 2018) and MBPO (Janner et al., 2019).

Each of `num_members` MLPs (default 5 members of 4 x 200 swish units) maps a
normalised (s, a) to a diagonal Gaussian over the normalised (s' - s, r):

    mean, log_var = f_k(s, a),   log_var bounded softly in [min_log_var, max_log_var]

with learned bounds (PETS appendix A.1): log_var <- max - softplus(max - log_var),
then log_var <- min + softplus(log_var - min). The loss per member is the Gaussian
negative log-likelihood E[(y - mean)^2 exp(-log_var) + log_var] plus
0.01 (sum max_log_var - sum min_log_var), which keeps the bounds tight.

Members are stacked weight arrays ([members, in, out]); one `einsum` runs them
all, so training and prediction are vmapped over members by construction. `fit`
holds out a fraction of the data and stops when no member's held-out MSE has
improved by more than 1% for `patience` epochs, keeping each member's best
parameters (MBPO's rule); the whole fit is one jitted `lax.while_loop`.
Members see the same data in independent orders (no bootstrap).

`sample_next(params, key, obs, action)` draws (s', r) from one member chosen
uniformly at random per transition; it is differentiable in obs and action
(reparameterised), for model-based value and policy losses.

Not here: rollouts of a policy in the model or any use of the model (in the
algorithm files).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlzoo.trainer import check
from rlzoo.datasets import Dataset


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
    """Static settings of the ensemble and its training."""

    num_members: int = 5
    """Ensemble members."""
    hidden_sizes: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden layer sizes of each member (swish activations)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Minibatch size (per member)."""
    holdout_fraction: float = 0.1
    """Fraction of the data held out for early stopping."""
    max_holdout: int = 5_000
    """At most this many held-out transitions."""
    max_epochs: int = 100
    """Upper bound on training epochs."""
    max_steps_per_epoch: int = 1_000
    """Gradient steps per epoch at most (an epoch is then a random part of the data)."""
    patience: int = 5
    """Epochs without a >1% improvement of any member's held-out MSE before stopping."""
    logvar_bound_coef: float = 0.01
    """Weight of the penalty sum(max_log_var) - sum(min_log_var)."""

    def __post_init__(self):
        for name in ("num_members", "batch_size", "max_holdout", "max_epochs", "max_steps_per_epoch", "patience"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(0.0 < self.holdout_fraction < 1.0, "holdout_fraction", self.holdout_fraction, "must lie in (0, 1)")
        check(self.lr > 0, "lr", self.lr, "must be > 0")
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "sizes must be >= 1")


class Normalizer(NamedTuple):
    mean: jax.Array
    std: jax.Array


class DynamicsParams(NamedTuple):
    """Everything `predict` and `sample_next` need: weights, log-variance bounds, normalisers."""

    weights: tuple[jax.Array, ...]  # per layer [members, in, out]
    biases: tuple[jax.Array, ...]  # per layer [members, out]
    max_log_var: jax.Array  # [members, obs_dim + 1]
    min_log_var: jax.Array  # [members, obs_dim + 1]
    inputs: Normalizer  # of concat(s, a)
    targets: Normalizer  # of concat(s' - s, r)

    @property
    def num_members(self) -> int:
        return int(self.weights[0].shape[0])


class FitInfo(NamedTuple):
    holdout_mse: jax.Array  # [members] best held-out MSE of the mean prediction (normalised targets)
    epochs: jax.Array  # epochs trained
    train_loss: jax.Array  # mean training loss of the last epoch


def init_params(key: jax.Array, obs_dim: int, action_dim: int, config: DynamicsConfig) -> DynamicsParams:
    """Lecun-normal weights, zero biases, log-variance bounds [-10, 0.5] (as MBPO), identity normalisers."""
    sizes = (obs_dim + action_dim, *config.hidden_sizes, 2 * (obs_dim + 1))
    keys = jax.random.split(key, len(sizes) - 1)
    weights = tuple(jax.random.normal(k, (config.num_members, n_in, n_out)) / np.sqrt(n_in)
                    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]))
    biases = tuple(jnp.zeros((config.num_members, n_out)) for n_out in sizes[1:])
    out = obs_dim + 1
    identity = lambda size: Normalizer(jnp.zeros(size), jnp.ones(size))  # noqa: E731
    return DynamicsParams(weights, biases, jnp.full((config.num_members, out), 0.5),
                          jnp.full((config.num_members, out), -10.0), identity(sizes[0]), identity(out))


def _normalised_outputs(params: DynamicsParams, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every member's mean and bounded log-variance of the normalised target: [members, B, obs_dim + 1] each."""
    x = (jnp.concatenate([obs, action], axis=-1) - params.inputs.mean) / params.inputs.std
    x = jnp.broadcast_to(x, (params.num_members, *x.shape))
    for i, (w, b) in enumerate(zip(params.weights, params.biases)):
        x = jnp.einsum("mbi,mio->mbo", x, w) + b[:, None]
        if i < len(params.weights) - 1:
            x = jax.nn.swish(x)
    mean, log_var = jnp.split(x, 2, axis=-1)
    high, low = params.max_log_var[:, None], params.min_log_var[:, None]
    log_var = high - jax.nn.softplus(high - log_var)
    log_var = low + jax.nn.softplus(log_var - low)
    return mean, log_var


def predict(params: DynamicsParams, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every member's Gaussian over (s' - s, r) in raw units: mean and log-variance, [members, B, obs_dim + 1]."""
    chex.assert_rank([obs, action], 2)
    mean, log_var = _normalised_outputs(params, obs, action)
    return mean * params.targets.std + params.targets.mean, log_var + 2 * jnp.log(params.targets.std)


def sample_next(params: DynamicsParams, key: jax.Array, obs: jax.Array,
                action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s', r) for each transition from one member drawn uniformly at random: [B, obs_dim] and [B]."""
    member_key, noise_key = jax.random.split(key)
    mean, log_var = predict(params, obs, action)
    member = jax.random.randint(member_key, (obs.shape[0],), 0, params.num_members)
    rows = jnp.arange(obs.shape[0])
    mean, std = mean[member, rows], jnp.exp(0.5 * log_var[member, rows])
    delta_and_reward = mean + std * jax.random.normal(noise_key, mean.shape)
    return obs + delta_and_reward[:, :-1], delta_and_reward[:, -1]


def gaussian_nll_loss(params: DynamicsParams, obs: jax.Array, action: jax.Array, target: jax.Array,
                      bound_coef: float) -> jax.Array:
    """Sum over members of the mean Gaussian NLL of the normalised target (up to constants), plus the bound penalty.

    `obs`, `action` and `target` are [members, B, ...]: each member its own minibatch.
    """
    def one_member(weights, biases, high, low, o, a, y):
        member = params._replace(weights=jax.tree.map(lambda w: w[None], weights),
                                 biases=jax.tree.map(lambda b: b[None], biases),
                                 max_log_var=high[None], min_log_var=low[None])
        mean, log_var = _normalised_outputs(member, o, a)
        y = (y - params.targets.mean) / params.targets.std
        return jnp.mean(jnp.square(mean[0] - y) * jnp.exp(-log_var[0]) + log_var[0])

    nll = jax.vmap(one_member)(params.weights, params.biases, params.max_log_var, params.min_log_var,
                               obs, action, target)
    return nll.sum() + bound_coef * (params.max_log_var.sum() - params.min_log_var.sum())


def holdout_mse(params: DynamicsParams, obs: jax.Array, action: jax.Array, target: jax.Array) -> jax.Array:
    """[members] MSE of each member's mean prediction of the normalised target."""
    mean, _ = _normalised_outputs(params, obs, action)
    y = (target - params.targets.mean) / params.targets.std
    return jnp.mean(jnp.square(mean - y[None]), axis=(1, 2))


def keep_best(weights, mse: jax.Array, best, best_mse: jax.Array, epochs_since: jax.Array):
    """MBPO's early-stopping bookkeeping after an epoch with held-out `mse` [members].

    A member whose MSE fell by more than 1% below its best keeps these weights as
    its best; `epochs_since` counts epochs in which no member improved.
    Returns (best weights, best MSE, epochs_since).
    """
    improved = mse < 0.99 * best_mse
    take = lambda new, old: jnp.where(improved.reshape(-1, *[1] * (new.ndim - 1)), new, old)  # noqa: E731
    best = jax.tree.map(take, weights, best)
    return best, jnp.where(improved, mse, best_mse), jnp.where(improved.any(), 0, epochs_since + 1)


def targets_of(dataset: Dataset) -> jax.Array:
    """concat(s' - s, r): what the model predicts, [N, obs_dim + 1]."""
    return jnp.concatenate([dataset.next_observations - dataset.observations, dataset.rewards[:, None]], axis=-1)


def fit(key: jax.Array, dataset: Dataset, config: DynamicsConfig = DynamicsConfig()) -> tuple[DynamicsParams, FitInfo]:
    """Trains the ensemble on `dataset` with held-out early stopping (module docstring)."""
    chex.assert_rank([dataset.observations, dataset.actions], 2)
    n = dataset.size
    num_holdout = min(max(int(n * config.holdout_fraction), 1), config.max_holdout)
    check(n - num_holdout >= config.batch_size, "batch_size", config.batch_size,
          f"must be <= the {n - num_holdout} training transitions")
    split_key, init_key, train_key = jax.random.split(key, 3)
    order = jax.random.permutation(split_key, n)
    inputs = jnp.concatenate([dataset.observations, dataset.actions], axis=-1)
    targets = targets_of(dataset)
    train, held = order[num_holdout:], order[:num_holdout]
    params = init_params(init_key, dataset.observations.shape[1], dataset.actions.shape[1], config)
    params = params._replace(inputs=Normalizer(inputs[train].mean(0), inputs[train].std(0) + 1e-6),
                             targets=Normalizer(targets[train].mean(0), targets[train].std(0) + 1e-6))
    return _fit_jitted(params, train_key, dataset.observations, dataset.actions, targets, train, held, config)


@functools.partial(jax.jit, static_argnames="config")
def _fit_jitted(params: DynamicsParams, key: jax.Array, obs: jax.Array, action: jax.Array, targets: jax.Array,
                train: jax.Array, held: jax.Array, config: DynamicsConfig) -> tuple[DynamicsParams, FitInfo]:
    optimizer = optax.adam(config.lr)
    members, batch = config.num_members, config.batch_size
    steps = min(train.shape[0] // batch, config.max_steps_per_epoch)
    trainable = lambda p: (p.weights, p.biases, p.max_log_var, p.min_log_var)  # noqa: E731
    def with_trainable(p: DynamicsParams, t: tuple) -> DynamicsParams:
        return p._replace(weights=t[0], biases=t[1], max_log_var=t[2], min_log_var=t[3])

    held_obs, held_action, held_target = obs[held], action[held], targets[held]

    def gradient_step(carry, rows):
        weights, opt_state = carry
        loss, grads = jax.value_and_grad(lambda t: gaussian_nll_loss(
            with_trainable(params, t), obs[rows], action[rows], targets[rows], config.logvar_bound_coef))(weights)
        updates, opt_state = optimizer.update(grads, opt_state, weights)
        return (optax.apply_updates(weights, updates), opt_state), loss

    def epoch(state):
        weights, opt_state, best, best_mse, since, count, key, _ = state
        key, shuffle_key = jax.random.split(key)
        orders = jax.vmap(lambda k: jax.random.permutation(k, train))(jax.random.split(shuffle_key, members))
        rows = orders[:, :steps * batch].reshape(members, steps, batch).swapaxes(0, 1)  # [steps, members, batch]
        (weights, opt_state), losses = jax.lax.scan(gradient_step, (weights, opt_state), rows)
        mse = holdout_mse(with_trainable(params, weights), held_obs, held_action, held_target)
        best, best_mse, since = keep_best(weights, mse, best, best_mse, since)
        return weights, opt_state, best, best_mse, since, count + 1, key, losses.mean() / members

    def keep_going(state):
        return (state[5] < config.max_epochs) & (state[4] < config.patience)

    weights = trainable(params)
    start = (weights, optimizer.init(weights), weights, jnp.full((members,), jnp.inf), jnp.zeros((), jnp.int32),
             jnp.zeros((), jnp.int32), key, jnp.zeros(()))
    _, _, best, best_mse, _, epochs, _, last_loss = jax.lax.while_loop(keep_going, epoch, start)
    return with_trainable(params, best), FitInfo(best_mse, epochs, last_loss)
