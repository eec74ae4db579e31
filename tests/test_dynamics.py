"""Facts about the dynamics ensemble: it fits Pendulum, samples a random member per transition, stops early."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import datasets, dynamics


@pytest.fixture(scope="module")
def pendulum_model(pendulum_offline):
    """The default ensemble (5 x 4x200 swish) fitted on 16,000 medium-replay transitions; the last 4,000 are a test set.

    The budget is capped for CPU tests: 15 epochs of at most 20 steps.
    """
    data, _ = datasets.load(pendulum_offline.written["medium-replay"]["path"])
    train = jax.tree.map(lambda x: x[:16_000], data)
    test = jax.tree.map(lambda x: x[16_000:], data)
    config = dynamics.DynamicsConfig(max_epochs=15, max_steps_per_epoch=20)
    params, info = dynamics.fit(jax.random.PRNGKey(0), train, config)
    return params, info, test


def test_the_ensemble_predicts_held_out_pendulum_transitions_far_better_than_no_change(pendulum_model):
    params, info, test = pendulum_model
    mean, _ = jax.jit(dynamics.predict)(params, test.observations, test.actions)
    assert mean.shape == (5, test.size, 4)
    predicted_next = test.observations + mean[..., :-1].mean(0)
    model_mse = float(jnp.mean(jnp.square(predicted_next - test.next_observations)))
    no_change_mse = float(jnp.mean(jnp.square(test.observations - test.next_observations)))
    reward_mse = float(jnp.mean(jnp.square(mean[..., -1].mean(0) - test.rewards)))
    print(f"held-out next-obs MSE {model_mse:.2e} vs no change {no_change_mse:.2e}; reward MSE {reward_mse:.2e} "
          f"vs variance {float(jnp.var(test.rewards)):.2e}; {int(info.epochs)} epochs")
    assert model_mse < 0.02 * no_change_mse
    assert reward_mse < 0.02 * float(jnp.var(test.rewards))
    assert np.isfinite(np.asarray(info.holdout_mse)).all() and (np.asarray(info.holdout_mse) < 0.1).all()


def test_sampled_transitions_scatter_around_the_mean_by_the_predicted_variance(pendulum_model):
    params, _, test = pendulum_model
    next_obs, reward = jax.jit(dynamics.sample_next)(params, jax.random.PRNGKey(1), test.observations, test.actions)
    assert next_obs.shape == test.next_observations.shape and reward.shape == test.rewards.shape
    sample_mse = float(jnp.mean(jnp.square(next_obs - test.next_observations)))
    no_change_mse = float(jnp.mean(jnp.square(test.observations - test.next_observations)))
    assert 0.0 < sample_mse < 0.05 * no_change_mse


def member_offsets_params(num_members=5, obs_dim=3, action_dim=1):
    """Members that differ only in their output bias: member k predicts a change of exactly k, with tiny variance."""
    config = dynamics.DynamicsConfig(num_members=num_members, hidden_sizes=(8,))
    params = dynamics.init_params(jax.random.PRNGKey(0), obs_dim, action_dim, config)
    weights = tuple(jnp.zeros_like(w) for w in params.weights)
    last = jnp.zeros_like(params.biases[-1]).at[:, : obs_dim + 1].set(jnp.arange(num_members)[:, None] * 1.0)
    last = last.at[:, obs_dim + 1:].set(-30.0)  # log-variance below the lower bound
    return params._replace(weights=weights, biases=(params.biases[0], last),
                           min_log_var=jnp.full_like(params.min_log_var, -20.0))


def test_sample_next_draws_one_member_uniformly_at_random_per_transition():
    params = member_offsets_params()
    obs, action = jnp.zeros((4000, 3)), jnp.zeros((4000, 1))
    next_obs, reward = jax.jit(dynamics.sample_next)(params, jax.random.PRNGKey(0), obs, action)
    member = np.asarray(reward).round().astype(int)
    np.testing.assert_allclose(next_obs, np.repeat(member[:, None], 3, axis=1), atol=1e-3)  # one member per row
    frequencies = np.bincount(member, minlength=5) / member.size
    assert (np.abs(frequencies - 0.2) < 0.03).all(), frequencies


def test_log_variance_stays_within_its_learned_bounds_for_any_input():
    params = dynamics.init_params(jax.random.PRNGKey(0), 3, 1, dynamics.DynamicsConfig())
    extreme = jnp.array([[1e4, -1e4, 1e4]]), jnp.array([[-1e4]])
    _, log_var = jax.jit(dynamics._normalised_outputs)(params, *extreme)
    assert (log_var <= params.max_log_var[:, None] + 1e-4).all()
    assert (log_var >= params.min_log_var[:, None] - 1e-4).all()


def test_early_stopping_keeps_each_member_s_best_weights_and_counts_epochs_without_improvement():
    best = jnp.zeros((3, 2))
    best_mse = jnp.array([1.0, 1.0, 1.0])
    weights = jnp.ones((3, 2))
    # Member 0 improves by 5%, member 1 by 0.5% (not enough), member 2 gets worse.
    best, best_mse, since = dynamics.keep_best(weights, jnp.array([0.95, 0.995, 1.2]), best, best_mse, jnp.asarray(3))
    np.testing.assert_array_equal(best, [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(best_mse, [0.95, 1.0, 1.0])
    assert int(since) == 0
    _, _, since = dynamics.keep_best(weights * 2, jnp.array([0.95, 1.0, 1.0]), best, best_mse, since)
    assert int(since) == 1
