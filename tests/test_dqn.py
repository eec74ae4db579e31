"""Facts about DQN: it learns CartPole with regression and classification losses; its inputs are checked."""

import jax
import numpy as np
import pytest

from rlzoo.algorithms.dqn import Config, HParams, make_train
from rlzoo.trainer import ConfigError
from rlzoo.evaluate import evaluate
from rlzoo.sweep import seed_keys
from tests.conftest import run_dqn


def greedy_return(trainer, state, keys, episodes=10):
    """Mean greedy return of each seed's current policy over `episodes` fresh episodes."""
    def one(member_state, key):
        policy = lambda k, obs: trainer.act(member_state, k, obs, True)  # noqa: E731
        return evaluate(policy, trainer.eval_env, key, episodes, 500).episode_return.mean()

    return np.asarray(jax.jit(jax.vmap(one))(state, keys))


def best_greedy_return_near_the_end(trainer, hparams, num_seeds=2, evaluations=5, tail=0.2):
    """Per seed, the best of `evaluations` greedy evaluations spread over the last `tail` of training.

    Value-based agents on CartPole oscillate around the 500 cap (a policy at 500 can
    briefly drop to ~350 after a target update), so "reaches 400" is read as: some
    evaluation late in training, on fresh episodes, is at least 400.
    """
    keys = seed_keys(0, num_seeds)
    per_chunk = int(trainer.num_updates * tail) // evaluations
    head = trainer.num_updates - per_chunk * evaluations
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(keys, hparams)
    state = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, head)[0]))(state)
    run_chunk = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, per_chunk)))
    best = np.full(num_seeds, -np.inf)
    for i in range(evaluations):
        state, metrics = run_chunk(state)
        assert np.isfinite(np.asarray(metrics["loss"])).all()
        best = np.maximum(best, greedy_return(trainer, state, jax.random.split(jax.random.PRNGKey(i), num_seeds)))
    return best


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "c51", "hl_gauss"])
def test_dqn_reaches_400_on_cartpole_on_each_of_two_seeds(loss):
    returns = best_greedy_return_near_the_end(make_train(Config(loss=loss)), HParams())
    assert (returns >= 400).all(), returns


@pytest.mark.parametrize("options", [
    dict(double=True, dueling=True, n_step=3),
    dict(loss="huber", n_step=5),
    dict(loss="two_hot", dueling=True),
    dict(env_id="Breakout-MinAtar", loss="c51", v_max=10.0),
])
def test_dqn_variants_run_end_to_end(options):
    config = Config(total_timesteps=2_000, learning_starts=500, num_envs=4, **options)
    _, metrics = jax.jit(make_train(config))(jax.random.PRNGKey(0), HParams())
    assert metrics["env_steps"][-1] == 2_000
    assert np.isfinite(np.asarray(metrics["loss"])).all()


def test_members_scan_the_vmapped_update_and_equal_vmapping_the_whole_run():
    trainer = make_train(Config(total_timesteps=1_200, learning_starts=400, num_envs=4, buffer_size=1_000))
    keys = seed_keys(0, 2)
    hparams = jax.tree.map(lambda x: np.array([x, x]), HParams())
    expected_state, expected_metrics = jax.jit(jax.vmap(trainer))(keys, hparams)
    state, metrics = jax.jit(trainer.members)(keys, hparams)
    assert metrics["loss"].shape == (2, trainer.num_updates)  # [members, updates], as vmap(trainer) gives
    for name in expected_metrics:
        np.testing.assert_allclose(metrics[name], expected_metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.params,
                 expected_state.params)


@pytest.mark.parametrize("options, message", [
    (dict(batch_size=256, learning_starts=100), "batch_size=256 is not allowed"),
    (dict(loss="c51", v_min=10.0, v_max=10.0), "v_min=10.0 is not allowed: must be < v_max"),
    (dict(n_step=0), "n_step=0 is not allowed"),
    (dict(num_atoms=1), "num_atoms=1 is not allowed"),
    (dict(buffer_size=5), "buffer_size=5 is not allowed"),
])
def test_bad_config_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config(**options)


def test_continuous_actions_are_refused():
    with pytest.raises(ConfigError, match="DQN needs discrete actions"):
        make_train(Config(env_id="Pendulum-v1"))


def test_dqn_keeps_the_run_folder_contract(tmp_path):
    summary = run_dqn(["--total-timesteps", "4000", "--learning-starts", "1000", "--num-chunks", "2",
                       "--no-progress", "--run-dir", str(tmp_path / "dqn"), "--num-seeds", "2"])
    for name in ("config.json", "metrics.csv", "summary.json", "eval.csv", "learning_curve.png"):
        assert (tmp_path / "dqn" / name).exists(), name
    assert summary["env_steps"] == 4000 and np.isfinite(summary["final_eval_return"])
