"""Facts about TD3: it learns Pendulum, its target policy smoothing is clipped, its inputs are checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.algorithms.td3 import Config, HParams, make_train, smoothed_target_action
from rlzoo.config import ConfigError, check_hparams
from rlzoo.experiment import run_cli
from tests.test_sac import greedy_return, train_two_seeds

# A CPU test budget: small networks, two gradient steps per vectorised env step (one actor step in two).
BUDGET = dict(total_timesteps=16_000, learning_starts=1_000, hidden_sizes=(64, 64), utd_ratio=2)
BUDGET_HPARAMS = HParams(actor_lr=1e-3, critic_lr=1e-3)


@pytest.mark.slow
def test_td3_reaches_minus_250_on_pendulum_on_each_of_two_seeds():
    """Greedy policy mu(s) at the end of training, on fresh episodes; random play gets about -1200."""
    trainer = make_train(Config(**BUDGET))
    state, metrics = train_two_seeds(trainer, BUDGET_HPARAMS)
    assert np.isfinite(np.asarray(metrics["critic_loss"])).all()
    returns = greedy_return(trainer, state)
    assert (returns >= -250).all(), returns


def test_target_policy_smoothing_noise_is_clipped_and_actions_stay_in_bounds():
    target_action = jnp.array([[-1.0], [0.0], [0.3], [1.0]]).repeat(5000, axis=0)
    hp = HParams(policy_noise=1.0, noise_clip=0.5)
    smoothed = np.asarray(smoothed_target_action(target_action, jax.random.PRNGKey(0), hp))
    noise = smoothed - np.asarray(target_action)
    assert (np.abs(noise) <= 0.5 + 1e-6).all() and (np.abs(smoothed) <= 1.0).all()
    assert np.abs(noise[5000:10000]).max() > 0.49  # std 1 noise does reach the clip
    assert np.abs(noise[10000:15000].std() - 0.4) < 0.05  # a clipped N(0, 1) has std about 0.40 at c = 0.5


@pytest.mark.parametrize("options, message", [
    (dict(utd_ratio=0), "utd_ratio=0 is not allowed: must be >= 1"),
    (dict(num_envs=0), "num_envs=0 is not allowed"),
])
def test_bad_config_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        Config(**options)


def test_bad_hparams_are_a_clear_error():
    with pytest.raises(ConfigError, match=r"policy_delay=0.5 is not allowed: must lie in \[1, inf\)"):
        check_hparams(HParams(policy_delay=0.5))


def test_discrete_actions_are_refused():
    with pytest.raises(ConfigError, match="env_id='CartPole-v1' is not allowed: SAC, TD3 and i-SAC need continuous"):
        make_train(Config(env_id="CartPole-v1"))


def test_td3_keeps_the_run_folder_contract(tmp_path):
    summary = run_cli("td3", Config, HParams, make_train, args=[
        "--total-timesteps", "2000", "--learning-starts", "500", "--hidden-sizes", "32", "32", "--batch-size", "64",
        "--num-chunks", "2", "--no-progress", "--run-dir", str(tmp_path / "td3"), "--num-seeds", "2"])
    for name in ("config.json", "metrics.csv", "summary.json", "eval.csv", "learning_curve.png"):
        assert (tmp_path / "td3" / name).exists(), name
    assert summary["env_steps"] == 2000 and np.isfinite(summary["final_eval_return"])
