"""Facts about i-SAC (SAC with iterated critics): K = 1 is SAC, K = 3 trains, the window rolls, inputs are checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import iterated
from rlzoo.algorithms import isac, sac
from rlzoo.trainer import ConfigError, check_hparams

TINY = dict(total_timesteps=2_000, learning_starts=400, hidden_sizes=(32, 32), batch_size=64)  # 400 gradient steps


def test_isac_with_one_critic_pair_is_sac_from_the_same_seed():
    """K = 1 with D = T = 1 and SAC's tau: rolling is SAC's Polyak step, so the runs agree to float rounding."""
    sac_state, sac_metrics = jax.jit(sac.make_train(sac.Config(**TINY)))(jax.random.PRNGKey(3), sac.HParams())
    isac_state, isac_metrics = jax.jit(isac.make_train(isac.Config(num_heads=1, **TINY)))(
        jax.random.PRNGKey(3), isac.HParams(tau=0.005, target_period=1.0, roll_period=1.0))
    assert int(sac_state.learner.gradient_steps) == 400
    for name in ("critic_params", "target_critic_params"):
        for a, b in zip(jax.tree.leaves(getattr(sac_state.learner, name)),
                        jax.tree.leaves(getattr(isac_state.learner, name)), strict=True):
            np.testing.assert_allclose(b[0], a, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sac_state.learner.actor_params), jax.tree.leaves(isac_state.learner.actor_params),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(isac_metrics["critic_loss"], sac_metrics["critic_loss"], rtol=1e-4, atol=1e-5)
    # Learning really happened: the temperature and the actor moved away from their initial values.
    init = jax.jit(sac.make_train(sac.Config(**TINY)).init)(jax.random.PRNGKey(3), sac.HParams())
    assert float(sac_state.learner.log_alpha) < -0.1
    assert not np.allclose(jax.tree.leaves(init.learner.actor_params)[0],
                           jax.tree.leaves(sac_state.learner.actor_params)[0])


def test_isac_with_three_critic_pairs_runs_end_to_end():
    config = isac.Config(num_heads=3, **TINY)
    state, metrics = jax.jit(isac.make_train(config))(jax.random.PRNGKey(0), isac.HParams(target_period=10.0,
                                                                                          roll_period=100.0))
    assert metrics["env_steps"][-1] == 2_000
    assert np.isfinite(np.asarray(metrics["critic_loss"])).all()
    assert all(leaf.shape[:2] == (3, 2) for leaf in jax.tree.leaves(state.learner.critic_params))
    # Gradient step 400 rolled the window (T = 100) and then the targets followed (D = 10): Q_2 took Q_3's
    # weights while Q_3 kept them, Q_1 (the old Q_2) differs from them, and Q_bar_k = Q_k for k = 1, 2.
    for online, target in zip(jax.tree.leaves(state.learner.critic_params),
                              jax.tree.leaves(state.learner.target_critic_params), strict=True):
        np.testing.assert_array_equal(online[1], online[2])
        assert np.abs(online[0] - online[1]).max() > 1e-3
        np.testing.assert_array_equal(target[1:], online[:-1])


def test_rolling_shifts_every_pair_down_by_one_and_moves_the_oldest_target():
    params = {"w": jnp.arange(3.0)[:, None] * jnp.ones((3, 2))}  # pairs Q_1, Q_2, Q_3 hold 0, 1, 2
    targets = {"w": jnp.full((3, 2), -1.0)}
    rolled_targets, rolled = iterated.roll(targets, params, 1.0)
    np.testing.assert_array_equal(rolled["w"][:, 0], [1.0, 2.0, 2.0])  # Q_k <- Q_{k+1}; the last keeps its weights
    np.testing.assert_array_equal(rolled_targets["w"][:, 0], [0.0, -1.0, -1.0])  # Q_bar_0 <- Q_1
    soft_targets, _ = iterated.roll(targets, params, 0.25)
    np.testing.assert_allclose(soft_targets["w"][0], -0.75)  # (1 - tau) Q_bar_0 + tau Q_1
    followed = iterated.follow(rolled_targets, rolled)
    np.testing.assert_array_equal(followed["w"][:, 0], [0.0, 1.0, 2.0])  # Q_bar_k <- Q_k for k >= 1


@pytest.mark.parametrize("options, message", [
    (dict(num_heads=0), "num_heads=0 is not allowed: K must be >= 1"),
    (dict(utd_ratio=0), "utd_ratio=0 is not allowed: must be >= 1"),
])
def test_bad_config_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        isac.Config(**options)


def test_roll_period_must_be_a_multiple_of_the_target_period():
    with pytest.raises(ConfigError, match="roll_period=25.0 is not allowed: T must be a multiple of target_period"):
        check_hparams(isac.HParams(target_period=10.0, roll_period=25.0))
    check_hparams(isac.HParams(target_period=10.0, roll_period=30.0))


def test_discrete_actions_are_refused():
    with pytest.raises(ConfigError, match="env_id='CartPole-v1' is not allowed: SAC, TD3 and i-SAC need continuous"):
        isac.make_train(isac.Config(env_id="CartPole-v1"))
