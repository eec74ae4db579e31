"""Facts about SAC: it learns Pendulum, its temperature drives the entropy to the target, its inputs are checked."""

import jax
import numpy as np
import pytest

from rlzoo import replay
from rlzoo.algorithms.sac import Config, HParams, SquashedGaussianActor, make_train, sample_action
from rlzoo.config import ConfigError
from rlzoo.evaluate import evaluate
from rlzoo.experiment import run_cli
from rlzoo.sweep import seed_keys

# A CPU test budget: small networks, two gradient steps per vectorised env step; Pendulum's
# target entropy is -1 (one action dimension) and alpha starts at 1.
BUDGET = dict(total_timesteps=10_000, learning_starts=1_000, hidden_sizes=(64, 64), utd_ratio=2)
BUDGET_HPARAMS = HParams(actor_lr=1e-3)


def greedy_return(trainer, state, num_seeds=2, episodes=16):
    """Mean return of each seed's greedy policy over `episodes` fresh Pendulum episodes (200 steps)."""
    def one(member_state, key):
        policy = lambda k, obs: trainer.act(member_state, k, obs, True)  # noqa: E731
        return evaluate(policy, trainer.eval_env, key, episodes, 200).episode_return.mean()

    return np.asarray(jax.jit(jax.vmap(one))(state, jax.random.split(jax.random.PRNGKey(123), num_seeds)))


def train_two_seeds(trainer, hparams):
    return jax.jit(jax.vmap(trainer, in_axes=(0, None)))(seed_keys(0, 2), hparams)


@pytest.fixture(scope="module")
def trained():
    """SAC trained once on Pendulum-v1 with two vmapped seeds, shared by the tests that check it."""
    trainer = make_train(Config(**BUDGET))
    state, metrics = train_two_seeds(trainer, BUDGET_HPARAMS)
    return trainer, state, jax.device_get(metrics)


@pytest.mark.slow
def test_sac_reaches_minus_250_on_pendulum_on_each_of_two_seeds(trained):
    """Greedy policy (tanh of the mean) at the end of training, on fresh episodes; random play gets about -1200."""
    trainer, state, metrics = trained
    assert np.isfinite(metrics["critic_loss"]).all() and np.isfinite(metrics["actor_loss"]).all()
    returns = greedy_return(trainer, state)
    assert (returns >= -250).all(), returns


@pytest.mark.slow
def test_temperature_drives_the_policy_entropy_to_the_target(trained):
    """Entropy estimate -E[log pi(a|s)] over 4096 replay states of the final policy: within 0.3 nats of -1."""
    _, state, metrics = trained
    actor = SquashedGaussianActor(1, BUDGET["hidden_sizes"])

    def entropy(member_state, key):
        sample_key, action_key = jax.random.split(key)
        obs = replay.sample(member_state.buffer, sample_key, 4096).transitions.obs
        return -sample_action(actor, member_state.learner.actor_params, obs, action_key)[1].mean()

    final_entropy = np.asarray(jax.jit(jax.vmap(entropy))(state, jax.random.split(jax.random.PRNGKey(7), 2)))
    assert (np.abs(final_entropy - (-1.0)) < 0.3).all(), final_entropy
    # The initial policy was more random than the target, so alpha had to fall from its initial 1.0.
    first_learning_update = BUDGET["learning_starts"] // Config().num_envs
    assert (metrics["entropy"][:, first_learning_update] > -1.0 + 0.5).all(), metrics["entropy"][:, first_learning_update]
    final_alpha = np.exp(np.asarray(state.learner.log_alpha))
    assert (final_alpha < 0.5).all(), final_alpha


def test_sac_trains_on_brax_hopper():
    """A smoke test of the brax path (positional backend): a few hundred steps of 4 envs."""
    config = Config(env_id="brax/hopper", num_envs=4, total_timesteps=400, learning_starts=200, batch_size=64,
                    hidden_sizes=(32, 32))
    trainer = make_train(config)
    state, metrics = jax.jit(trainer)(jax.random.PRNGKey(0), HParams())
    assert metrics["env_steps"][-1] == 400
    assert np.isfinite(np.asarray(metrics["critic_loss"])).all()
    actions = trainer.act(state, jax.random.PRNGKey(1), state.obs, False)
    assert actions.shape == (4, 3) and (np.abs(np.asarray(actions)) <= 1.0).all()


@pytest.mark.parametrize("options, message", [
    (dict(utd_ratio=0), "utd_ratio=0 is not allowed: must be >= 1"),
    (dict(batch_size=512, learning_starts=100), "batch_size=512 is not allowed"),
    (dict(brax_backend="bullet"), "brax_backend='bullet' is not allowed"),
])
def test_bad_config_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        Config(**options)


def test_discrete_actions_are_refused():
    with pytest.raises(ConfigError, match="env_id='CartPole-v1' is not allowed: SAC, TD3 and i-SAC need continuous"):
        make_train(Config(env_id="CartPole-v1"))


def test_sac_keeps_the_run_folder_contract(tmp_path):
    summary = run_cli("sac", Config, HParams, make_train, args=[
        "--total-timesteps", "2000", "--learning-starts", "500", "--hidden-sizes", "32", "32", "--batch-size", "64",
        "--num-chunks", "2", "--no-progress", "--run-dir", str(tmp_path / "sac"), "--num-seeds", "2"])
    for name in ("config.json", "metrics.csv", "summary.json", "eval.csv", "learning_curve.png"):
        assert (tmp_path / "sac" / name).exists(), name
    assert summary["env_steps"] == 2000 and np.isfinite(summary["final_eval_return"])
