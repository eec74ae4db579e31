"""Facts about i-QN (iterated Q-Network): K = 1 is DQN, K = 3 learns CartPole, its inputs are checked."""

import jax
import numpy as np
import pytest

from rlzoo.algorithms import dqn, iqn
from rlzoo.trainer import ConfigError, check_hparams
from tests.test_dqn import best_greedy_return_near_the_end


def test_iqn_with_one_network_is_dqn_with_a_hard_target_update_every_T_updates():
    steps = dict(total_timesteps=3_000, learning_starts=500)  # 300 updates, 250 of them learning
    dqn_state, dqn_metrics = jax.jit(dqn.make_train(dqn.Config(**steps)))(
        jax.random.PRNGKey(3), dqn.HParams(target_period=20.0))
    iqn_state, iqn_metrics = jax.jit(iqn.make_train(iqn.Config(num_heads=1, **steps)))(
        jax.random.PRNGKey(3), iqn.HParams(target_period=20.0, roll_period=20.0))
    for a, b in zip(jax.tree.leaves(dqn_state.params), jax.tree.leaves(iqn_state.params), strict=True):
        np.testing.assert_allclose(a, b[0], atol=1e-5)
    np.testing.assert_allclose(dqn_metrics["loss"], iqn_metrics["loss"], rtol=1e-4, atol=1e-5)
    # Learning really happened: the parameters moved away from their initial values.
    init = dqn.make_train(dqn.Config(**steps)).init(jax.random.PRNGKey(3), dqn.HParams())
    assert not np.allclose(jax.tree.leaves(init.params)[0], jax.tree.leaves(dqn_state.params)[0])


@pytest.mark.slow
def test_iqn_with_three_networks_reaches_400_on_cartpole_on_each_of_two_seeds():
    returns = best_greedy_return_near_the_end(iqn.make_train(iqn.Config(num_heads=3)), iqn.HParams())
    assert (returns >= 400).all(), returns


@pytest.mark.parametrize("options, message", [
    (dict(num_heads=0), "num_heads=0 is not allowed: K must be >= 1"),
    (dict(loss="c51"), "i-QN here supports mse or huber"),
    (dict(batch_size=512, learning_starts=100), "batch_size=512 is not allowed"),
])
def test_bad_config_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        iqn.Config(**options)


def test_roll_period_must_be_a_multiple_of_the_target_period():
    with pytest.raises(ConfigError, match="roll_period=25.0 is not allowed: T must be a multiple of target_period"):
        check_hparams(iqn.HParams(target_period=10.0, roll_period=25.0))
    check_hparams(iqn.HParams(target_period=10.0, roll_period=30.0))


def test_rolling_the_window_shifts_every_iteration_down_by_one_in_both_variants():
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    shared = iqn.MultiHeadQNetwork((4,), 2, num_heads=4, hidden_sizes=(8,))
    params = shared.init(jax.random.PRNGKey(1), obs)
    iterations = iqn.shared_torso(shared)
    _, rolled = iterations.roll(params, params)
    before, after = shared.apply(params, obs), shared.apply(rolled, obs)  # [B, K+1, A]
    np.testing.assert_allclose(after[:, :-1], before[:, 1:], rtol=1e-6)  # Q_k <- Q_{k+1}, Q_bar_0 <- Q_1
    np.testing.assert_allclose(after[:, -1], before[:, -1], rtol=1e-6)  # the last keeps its weights

    network = iqn.QNetwork((4,), 2, hidden_sizes=(8,))
    stacked = jax.vmap(lambda k: network.init(k, obs))(jax.random.split(jax.random.PRNGKey(2), 3))
    separate = iqn.separate_networks(network)
    targets, rolled = separate.roll(stacked, stacked)
    q, q_rolled, q_targets = (separate.online_q(p, obs) for p in (stacked, rolled, targets))
    np.testing.assert_allclose(q_targets[0], q[0])  # Q_bar_0 <- Q_1
    np.testing.assert_allclose(q_rolled[:-1], q[1:])
    np.testing.assert_allclose(q_rolled[-1], q[-1])
    followed = separate.follow(targets, rolled)
    np.testing.assert_allclose(separate.target_q(followed, obs)[1:], q_rolled[:-1])  # Q_bar_k <- Q_k


@pytest.mark.slow
def test_shared_torso_iqn_learns_cartpole():
    """With the separate variant's defaults (untuned); a random policy gets about 22."""
    returns = best_greedy_return_near_the_end(iqn.make_train(iqn.Config(num_heads=3, shared_torso=True)),
                                              iqn.HParams())
    assert (returns >= 300).all(), returns
