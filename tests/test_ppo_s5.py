"""Facts about recurrent PPO (ppo_s5): with S5 memory it learns RepeatPrevious-Easy, which no
memoryless agent can (its best expected return is -0.5); it beats the memoryless agent on
StatelessCartPole; minibatch replay equals acting; bad settings are clear errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.algorithms.ppo_s5 import Config, HParams, make_env_and_network, make_train, split_envs
from rlzoo.trainer import ConfigError
from rlzoo.envs import make_env
from rlzoo.evaluate import evaluate_policy_of
from rlzoo.envs.meta import MetaRLEnv
from rlzoo.sweep import seed_keys
from tests.conftest import TINY

# Small models and budgets for a CPU test: one S5 layer of width 32 with 32 states.
SMALL_MODEL = dict(num_layers=1, d_model=32, state_size=32, num_envs=32, num_steps=128, num_minibatches=4)


def train_two_seeds(config: Config, hparams: HParams, with_state: bool = False):
    """Metrics of 2 vmapped seeds; with `with_state`, (trainer, final states, metrics)."""
    trainer = make_train(config)
    state, metrics = jax.jit(jax.vmap(trainer, in_axes=(0, None)))(seed_keys(0, 2), hparams)
    return (trainer, state, jax.device_get(metrics)) if with_state else jax.device_get(metrics)


@pytest.fixture(scope="module")
def repeat_previous():
    """S5 on RepeatPrevious-Easy, 6e5 steps, 2 vmapped seeds (trained once for this module).

    The answer at step t depends only on the card of step t-4, so a short discount
    (gamma 0.5) credits answers to themselves. lr 5e-3 rather than 3e-3: the same
    cost, and the slower test seed ends at 0.96 instead of 0.75 (see the test).
    """
    config = Config(env_id="RepeatPrevious-Easy", total_timesteps=600_000, **SMALL_MODEL)
    return train_two_seeds(config, HParams(lr=5e-3, gamma=0.5, gae_lambda=0.9), with_state=True)


@pytest.fixture(scope="module")
def stateless_cartpole():
    """S5 and the memoryless agent on StatelessCartPole-Easy, 2e5 steps each, 2 seeds each."""
    hparams = HParams(lr=3e-3)
    return {model: train_two_seeds(Config(env_id="StatelessCartPole-Easy", total_timesteps=200_000,
                                          sequence_model=model, **SMALL_MODEL), hparams)
            for model in ("s5", "none")}


@pytest.mark.slow
def test_s5_learns_repeat_previous_easy_far_beyond_any_memoryless_policy(repeat_previous):
    """Return in [-1, 1]; guessing, the best a memoryless agent can do, expects -0.5.

    Threshold: >= 0.25 on each of 2 seeds within 6e5 steps, and >= 0.75 on average.
    Not every seed is done by then, so the per-seed bar is set below the slowest seed
    measured. Measured (sequential scan) on the test's seeds: 1.00 and 0.96 with lr 5e-3
    (on an Intel Xeon and on an AMD EPYC alike); 0.99 and 0.75 with lr 3e-3. Two further
    seeds: 1.00 and 0.44 (lr 5e-3), 0.98 and 0.41 (lr 3e-3). References: guessing -0.5,
    the untrained agent's first rollout -0.52 and -0.47.
    """
    _, _, metrics = repeat_previous
    final = metrics["episode_return"][:, -1]
    first = metrics["episode_return"][:, 0]
    print(f"RepeatPrevious-Easy: first {first}, final {final}")
    assert (first < -0.3).all(), first  # it starts at guessing
    assert (final >= 0.25).all() and final.mean() >= 0.75, final


@pytest.mark.slow
def test_evaluation_carries_the_hidden_state_through_each_episode(repeat_previous):
    """The run folder's evaluation of a recurrent agent (`evaluate_policy_of` with `Trainer.act_carry`).

    The trained S5 agent's greedy policy, its memory carried through the episode,
    scores what training reached (>= 0.75 per seed). The same policy with its memory
    wiped before every step is memoryless and must fall to guessing (< 0; expected
    -0.5): so the carry is what the evaluation threads, not a constant.
    """
    trainer, states, _ = repeat_previous
    keys = seed_keys(1, 2)
    remembered = jax.vmap(lambda s, k: evaluate_policy_of(trainer, s, k, 16, True).episode_return.mean())(
        states, keys)

    def act_forgetting(state, key, obs, greedy, carry):
        action, _ = trainer.act(state, key, obs, greedy, trainer.act_carry(obs.shape[0]))
        return action, carry

    forgetful = dataclasses.replace(trainer, act=act_forgetting)
    forgotten = jax.vmap(lambda s, k: evaluate_policy_of(forgetful, s, k, 16, True).episode_return.mean())(
        states, keys)
    assert (np.asarray(remembered) >= 0.75).all(), remembered
    assert (np.asarray(forgotten) < 0.0).all(), forgotten


@pytest.mark.slow
def test_s5_beats_the_memoryless_agent_on_stateless_cartpole(stateless_cartpole):
    """Mean return over the last 10% of updates, per seed (returns in [0, 1], 1 = 200 steps balanced).

    Measured at this budget (2e5 steps): S5 1.00 on both seeds, memoryless 0.27 and 0.25 (it cannot see
    velocities). References: random actions keep CartPole up about 22 steps (0.11), the memoryless agent above.
    """
    tail = lambda m: m["episode_return"][:, -len(m["episode_return"][0]) // 10:].mean(axis=1)  # noqa: E731
    s5, memoryless = tail(stateless_cartpole["s5"]), tail(stateless_cartpole["none"])
    print(f"StatelessCartPole-Easy: S5 {s5}, memoryless {memoryless}")
    assert (s5 >= memoryless + 0.3).all(), (s5, memoryless)
    assert (s5 >= 0.6).all(), s5


def test_minibatch_replay_of_a_rollout_reproduces_the_acting_log_probs_on_a_meta_rl_task():
    """At the first epoch the PPO ratio is 1: replaying whole sequences from the carried state equals acting.

    Runs on meta/CartPole-v1 (projected observations, previous action, reward and trial flag as input).
    """
    config = Config(env_id="meta/CartPole-v1", total_timesteps=2 * 8 * 64, num_envs=8, num_steps=64,
                    num_minibatches=2, num_epochs=1, d_model=16, state_size=8, num_layers=2)
    vec_env, _ = make_env_and_network(config)
    assert vec_env.spec.obs_shape == (4 + 2 + 2,)  # projected obs, previous action one-hot, reward, trial flag
    hparams = HParams(lr=1e-12)  # parameters barely move: the second update's ratios stay 1 too
    _, metrics = jax.jit(make_train(config))(jax.random.PRNGKey(0), hparams)
    np.testing.assert_allclose(metrics["approx_kl"], 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], 0.0)
    assert np.isfinite(np.asarray(metrics["value_loss"])).all()


def test_split_envs_keeps_whole_sequences_together():
    x = jnp.arange(6 * 4).reshape(6, 4)  # [T, envs]: column e holds env e's sequence
    groups = split_envs(x, jnp.asarray([2, 0, 3, 1]), 2, axis=1)
    assert groups.shape == (2, 6, 2)
    np.testing.assert_array_equal(groups[0], x[:, [2, 0]])
    np.testing.assert_array_equal(groups[1], x[:, [3, 1]])


@pytest.mark.parametrize("model", ["s5"])  # GRU and LSTM share the interface (tests/test_sequence.py)
def test_the_cli_trains_and_writes_a_run_folder_with_checkpoints_of_the_complex_s5_state(model, tmp_path):
    from rlzoo.algorithms import ppo_s5
    from rlzoo.runner import run_cli

    args = [*TINY, "--num-envs", "8", "--num-steps", "64", "--num-minibatches", "2", "--sequence-model", model,
            "--d-model", "16", "--state-size", "8", "--num-layers", "1", "--run-dir", str(tmp_path / model)]
    summary = run_cli("ppo_s5", ppo_s5.Config, ppo_s5.HParams, ppo_s5.make_train, args=args)
    assert summary["env_steps"] == 8192
    assert np.isfinite(summary["final_eval_return"])  # recurrent evaluation episodes ran
    assert (tmp_path / model / "checkpoints").is_dir()


@pytest.mark.parametrize("options, message", [
    (dict(sequence_model="transformer"), "sequence_model='transformer' is not allowed: one of s5, gru, lstm, none"),
    (dict(state_size=0), "state_size=0 is not allowed: must be a positive even number"),
    (dict(state_size=-4), "state_size=-4 is not allowed"),
    (dict(d_model=0), "d_model=0 is not allowed: must be >= 1"),
    (dict(scan="parallel"), "scan='parallel' is not allowed: one of auto, associative, sequential"),
    (dict(num_envs=6, num_minibatches=4), "num_minibatches=4 is not allowed: must divide num_envs = 6"),
])
def test_bad_config_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config(**options)


def test_meta_wrapper_refuses_an_env_without_terminated_and_truncated_flags():
    import gymnax

    raw_gymnax, _ = gymnax.make("CartPole-v1")  # not adapted: step(key, state, action, params), six values
    with pytest.raises(ConfigError, match="cannot be meta-wrapped"):
        MetaRLEnv(raw_gymnax)

    class FiveValues:  # gymnax 0.x style: one `done` flag instead of terminated and truncated
        spec = make_env("CartPole-v1").spec
        inner = make_env("CartPole-v1")

        def reset(self, key):
            return self.inner.reset(key)

        def step(self, key, state, action):
            state, obs, reward, terminated, truncated, _ = self.inner.step(key, state, action)
            return state, obs, reward, jnp.logical_or(terminated, truncated), {}

    with pytest.raises(ConfigError, match="boolean terminated and truncated flags"):
        MetaRLEnv(FiveValues())
    with pytest.raises(ConfigError, match="num_trials=0 is not allowed"):
        MetaRLEnv(make_env("CartPole-v1"), num_trials=0)
