"""Facts about i-QN (iterated Q-Network): its loss is eq. 3, K = 1 is DQN, K = 3 learns CartPole, its inputs
are checked."""

import jax
import numpy as np
import pytest

from rlzoo.algorithms import dqn, iqn
from rlzoo.networks import QNetwork
from rlzoo.trainer import ConfigError, check_hparams
from tests.test_dqn import best_greedy_return_near_the_end
from tests.test_dqn_loss import ACTIONS, DISCOUNTS, RETURNS, WEIGHTS, huber, make_sample

NUM_HEADS = 3


def numpy_iterated_loss(loss: str, online_q: np.ndarray, next_target_q: np.ndarray) -> tuple[float, float]:
    """i-QN's loss (Vincent et al., TMLR 2025, eq. 3), with a loop over the K iterations:

        L = sum_{k=1..K} E_w[l(Q_k(s, a) - (R^(n) + gamma^m (1 - term) max_a' Q_bar_{k-1}(s', a')))],

    l(x) = x^2 / 2 (mse) or Huber. `online_q[k - 1]` holds Q_k(s, .), `next_target_q[k - 1]` Q_bar_{k-1}(s', .).
    Returns (L, mean of Q_k(s, a) over k and the batch).
    """
    rows = np.arange(len(ACTIONS))
    total, taken_values = 0.0, []
    for k in range(1, len(online_q) + 1):
        taken = online_q[k - 1][rows, ACTIONS]
        target = RETURNS + DISCOUNTS * next_target_q[k - 1].max(axis=-1)
        error = taken - target
        total += np.mean(WEIGHTS * (0.5 * error ** 2 if loss == "mse" else huber(error)))
        taken_values.append(taken)
    return total, float(np.mean(taken_values))


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_iterated_loss_of_separate_networks_regresses_each_q_k_on_the_target_of_q_bar_k_minus_1(loss):
    """With K = 3 separate networks (different weights in every online and target slot), `iterated_loss`
    equals eq. 3 computed in NumPy from each network's Q-values.

    Catches: every head regressing on Q_bar_0 (or on its own target slot shifted by one); bootstrapping
    from the online networks; a mean over the K iterations instead of their sum; ignoring the discount of
    terminated rows; using the first transition's next observation.
    """
    config = iqn.Config(num_heads=NUM_HEADS, loss=loss, hidden_sizes=(16,))
    sample = make_sample()
    network = QNetwork((3,), 3, hidden_sizes=config.hidden_sizes)
    init = lambda seed: jax.vmap(lambda k: network.init(k, sample.first.obs))(  # noqa: E731
        jax.random.split(jax.random.PRNGKey(seed), NUM_HEADS))
    params, target_params = init(0), init(1)
    slot = lambda tree, k: jax.tree.map(lambda x: x[k], tree)  # noqa: E731
    online_q = np.array([network.apply(slot(params, k), sample.first.obs) for k in range(NUM_HEADS)], np.float64)
    next_target_q = np.array([network.apply(slot(target_params, k), sample.last.next_obs)
                              for k in range(NUM_HEADS)], np.float64)
    loss_value, q_mean = jax.jit(lambda p, t: iqn.iterated_loss(config, iqn.separate_networks(network), p, t,
                                                                sample))(params, target_params)
    expected_loss, expected_q = numpy_iterated_loss(loss, online_q, next_target_q)
    np.testing.assert_allclose(loss_value, expected_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q_mean, expected_q, rtol=1e-4, atol=1e-6)
    # The K targets really differ, so pairing Q_k with the wrong Q_bar changes the loss.
    targets = next_target_q.max(axis=-1)
    assert np.abs(targets[0] - targets[1]).max() > 0.05 and np.abs(targets[1] - targets[2]).max() > 0.05


def test_iterated_loss_of_the_shared_torso_reads_online_heads_1_to_K_and_target_heads_0_to_K_minus_1():
    """Shared torso with K + 1 heads: Q_k is online head k and Q_bar_{k-1} is head k - 1 of the target copy;
    `iterated_loss` equals eq. 3 in NumPy from the K + 1 heads' outputs.

    Catches: reading online head k - 1 or target head k (an off-by-one in the head layout), or taking the
    targets from the online parameters.
    """
    config = iqn.Config(num_heads=NUM_HEADS, hidden_sizes=(16,), shared_torso=True)
    sample = make_sample()
    network = iqn.MultiHeadQNetwork((3,), 3, NUM_HEADS + 1, config.hidden_sizes)
    params = network.init(jax.random.PRNGKey(0), sample.first.obs)
    target_params = network.init(jax.random.PRNGKey(1), sample.first.obs)
    heads = np.moveaxis(np.asarray(network.apply(params, sample.first.obs), np.float64), 1, 0)  # [K+1, B, A]
    next_target_heads = np.moveaxis(np.asarray(network.apply(target_params, sample.last.next_obs), np.float64), 1, 0)
    loss_value, q_mean = iqn.iterated_loss(config, iqn.shared_torso(network), params, target_params, sample)
    expected_loss, expected_q = numpy_iterated_loss("mse", heads[1:], next_target_heads[:-1])
    np.testing.assert_allclose(loss_value, expected_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q_mean, expected_q, rtol=1e-4, atol=1e-6)
    assert np.abs(heads[1:] - heads[:-1]).max() > 0.05  # the heads differ


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
    init = jax.jit(dqn.make_train(dqn.Config(**steps)).init)(jax.random.PRNGKey(3), dqn.HParams())
    assert not np.allclose(jax.tree.leaves(init.params)[0], jax.tree.leaves(dqn_state.params)[0])


@pytest.mark.slow
def test_iqn_with_three_networks_reaches_400_on_cartpole_on_each_of_two_seeds():
    """3e5 steps (the default 5e5 cost 111 s of a cold `make test`). Measured (2026-12-07, AMD EPYC): 500.0 and
    482.2. References: random actions about 22; the untrained greedy network 9.2-94.3 on 4 seeds."""
    config = iqn.Config(num_heads=3, total_timesteps=300_000)
    returns = best_greedy_return_near_the_end(iqn.make_train(config), iqn.HParams())
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
