"""Facts about SAC: it learns Pendulum, its temperature drives the entropy to the target, its inputs are checked."""

import csv

import jax
import numpy as np
import pytest

from rlzoo import presets, replay
from rlzoo.algorithms.sac import Config, HParams, SquashedGaussianActor, make_train, sample_action
from rlzoo.trainer import ConfigError
from rlzoo.runner import load_run, run_cli

# CLI defaults alone on Pendulum-v1, the default env: the preset sac/pendulum (RL Zoo's; rlzoo/presets.py) picks
# the budget (2e4 steps of 1 env, one gradient step per env step, 256x256 networks). 2 seeds.
PRESET = presets.choose_preset("sac", "Pendulum-v1", None)
RUN = ["--num-seeds", "2", "--num-chunks", "1", "--eval-episodes", "16", "--no-progress"]
FILES = ("config.json", "metrics.csv", "summary.json", "eval.csv", "learning_curve.png")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def final_eval_returns(run_dir):
    """Per seed, the mean return of the greedy policy over fresh episodes after the last chunk (eval.csv)."""
    rows = read_rows(run_dir / "eval.csv")
    last = max(int(r["update"]) for r in rows)
    return np.array([float(r["eval_return"]) for r in sorted(rows, key=lambda r: int(r["seed"]))
                     if int(r["update"]) == last])


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    """One CLI run of SAC on Pendulum-v1 with two vmapped seeds, shared by the tests that check it."""
    run_dir = tmp_path_factory.mktemp("runs") / "sac"
    summary = run_cli("sac", Config, HParams, make_train, args=[*RUN, "--run-dir", str(run_dir)])
    return run_dir, summary


def test_sac_keeps_the_run_folder_contract(sac_run):
    run_dir, summary = sac_run
    for name in FILES:
        assert (run_dir / name).exists(), name
    assert summary["env_steps"] == 20_000 and np.isfinite(summary["final_eval_return"])
    rows = read_rows(run_dir / "metrics.csv")
    assert len(rows) == 2 * 20_000 and np.isfinite([float(r["critic_loss"]) for r in rows]).all()


@pytest.mark.slow
def test_sac_reaches_minus_250_on_pendulum_on_each_of_two_seeds_with_cli_defaults(sac_run):
    """With CLI defaults alone (the sac/pendulum preset), the final greedy policy (tanh of the mean) on 16
    fresh episodes per seed; random play gets about -1200."""
    returns = final_eval_returns(sac_run[0])
    assert returns.shape == (2,) and (returns >= -250).all(), returns


@pytest.mark.slow
def test_temperature_drives_the_policy_entropy_to_the_target(sac_run):
    """-E[log pi(a|s)] of the final policy over 4096 replay states per seed: within 0.3 nats of -1 = -action_dim."""
    run_dir, _ = sac_run
    state = load_run(run_dir, make_train, Config, HParams).state
    actor = SquashedGaussianActor(1, PRESET.values["hidden_sizes"])

    def entropy(member_state, key):
        sample_key, action_key = jax.random.split(key)
        obs = replay.sample(member_state.buffer, sample_key, 4096).transitions.obs
        return -sample_action(actor, member_state.learner.actor_params, obs, action_key)[1].mean()

    final_entropy = np.asarray(jax.jit(jax.vmap(entropy))(state, jax.random.split(jax.random.PRNGKey(7), 2)))
    assert (np.abs(final_entropy - (-1.0)) < 0.3).all(), final_entropy
    # When learning started the policy was more random than the target, so alpha had to fall from 1.
    first = [r for r in read_rows(run_dir / "metrics.csv") if int(r["update"]) == PRESET.values["learning_starts"] + 1]
    assert all(float(r["entropy"]) > -0.5 for r in first), first
    final_alpha = np.exp(np.asarray(state.learner.log_alpha))
    assert (final_alpha < 0.5).all(), final_alpha


def test_sac_on_brax_hopper_stores_each_fall_as_a_termination_with_its_true_final_observation():
    """The brax path (positional backend), a few hundred steps of 4 envs: hopper terminates when it falls.

    In the replay buffer, a row that did not end an episode has next_obs = the obs of the next row; a row
    that terminated has next_obs = the fallen state, which differs from the next row's obs (the reset
    state). Catches the reset observation stored as the next one, and falls stored as truncations."""
    config = Config(env_id="brax/hopper", num_envs=32, total_timesteps=3200, learning_starts=1600, batch_size=64,
                    hidden_sizes=(32, 32))
    trainer = make_train(config)
    state, metrics = jax.jit(trainer)(jax.random.PRNGKey(0), HParams())
    assert metrics["env_steps"][-1] == 3200
    assert np.isfinite(np.asarray(metrics["critic_loss"])).all()
    data, rows = state.buffer.data, int(state.buffer.size)
    assert rows == 100
    obs, next_obs = np.asarray(data.obs[:rows]), np.asarray(data.next_obs[:rows])
    terminated, truncated = np.asarray(data.terminated[:rows - 1]), np.asarray(data.truncated[:rows - 1])
    print(f"hopper falls stored: {terminated.sum()} in {terminated.size} rows")
    assert terminated.sum() >= 3 and not truncated.any(), terminated.sum()  # measured: 17 falls
    same_as_next_row = np.all(np.isclose(next_obs[:-1], obs[1:]), axis=-1)  # [rows - 1, envs]
    assert same_as_next_row[~terminated].all()
    assert not same_as_next_row[terminated].any()


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
