"""Facts about DQN: its Q-values on the probe envs are the closed-form ones; it learns CartPole with regression
and classification losses; its inputs are checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.algorithms.dqn import Config, HParams, make_train
from rlzoo.envs.probes import MISTAKES, probe_values
from rlzoo.networks import QNetwork
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
    run_chunk = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, per_chunk)))
    if head % per_chunk == 0:  # the head as chunks of the same program: one compile fewer
        for _ in range(head // per_chunk):
            state = run_chunk(state)[0]
    else:
        state = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, head)[0]))(state)
    best = np.full(num_seeds, -np.inf)
    for i in range(evaluations):
        state, metrics = run_chunk(state)
        assert np.isfinite(np.asarray(metrics["loss"])).all()
        best = np.maximum(best, greedy_return(trainer, state, jax.random.split(jax.random.PRNGKey(i), num_seeds)))
    return best


@pytest.mark.slow
def test_dqn_reaches_400_on_cartpole_on_each_of_two_seeds():
    """References: random actions about 22; the untrained greedy network 9.2-94.3 on 4 seeds. C51, HL-Gauss and
    two-hot have no CartPole learning test of their own (their targets and losses are checked exactly in
    test_dqn_loss.py, the rest of the program is the one this run exercises, and C51 learns inside SPR in
    test_spr.py); a C51 run here cost 122 s of a cold `make test` (87 s warm) and passed at 400 when it ran."""
    returns = best_greedy_return_near_the_end(make_train(Config()), HParams())
    assert (returns >= 400).all(), returns


@pytest.mark.slow
def test_dqn_reaches_minus_100_on_acrobot_on_each_of_two_seeds_with_cli_defaults(tmp_path):
    """`dqn.py --env-id Acrobot-v1` and nothing else: the preset dqn/acrobot (CleanRL's dqn.py, 5e5 steps). The
    final greedy policy on 16 fresh episodes per seed; random play gets about -500 (the time limit). Measured:
    -88.1 and -79.6 (CleanRL's model card: -96.80 +- 21.87)."""
    from rlzoo.runner import run_cli
    from tests.test_sac import RUN, final_eval_returns

    run_cli("dqn", Config, HParams, make_train, args=["--env-id", "Acrobot-v1", *RUN,
                                                        "--run-dir", str(tmp_path / "dqn")])
    returns = final_eval_returns(tmp_path / "dqn")
    assert returns.shape == (2,) and (returns >= -100).all(), returns


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


PROBE_GAMMA = 0.5
PROBE_TOLERANCE = 0.08
"""Each learned Q(s, a) must be this close to the closed form; every classic mistake is >= 2x as far off."""


def probe_action_values(env_id: str) -> np.ndarray:
    """Q(phase, action) learned by DQN (gamma 0.5, uniformly random acting), 2 vmapped seeds: [2, 2, 2]."""
    config = Config(env_id=env_id, hidden_sizes=(16,), total_timesteps=8 * 500, num_envs=8, buffer_size=2_000,
                    batch_size=128, learning_starts=400)
    hparams = HParams(gamma=PROBE_GAMMA, lr=3e-3, target_period=10.0, eps_start=1.0, eps_end=1.0)
    state, _ = jax.jit(jax.vmap(make_train(config), in_axes=(0, None)))(seed_keys(0, 2), hparams)
    network = QNetwork((2,), 2, hidden_sizes=config.hidden_sizes, activation=config.activation)
    return np.asarray(jax.vmap(lambda p: network.apply(p, jnp.eye(2)))(state.params))


@pytest.mark.parametrize("env_id, ending", [("ProbeTerminate-v0", "terminate"), ("ProbeTruncate-v0", "truncate")])
def test_dqn_learns_the_closed_form_values_of_the_probe_envs(env_id, ending):
    """Q(0, a) and Q(1, a), both actions, are within 0.08 of `probe_values(0.5, ending)` on each of 2 seeds.

    Catches each classic mistake, checked by injecting it into the env's time steps (learned Q(0, .), Q(1, .)):
    a discount that ignores termination on ProbeTerminate (0.67, 1.33 instead of 0.29, 1.14); on ProbeTruncate,
    truncation treated as termination (0.28-0.32, 1.14-1.17 instead of 0.67, 1.33) or bootstrapping from the
    reset observation instead of the true final one (0.40-0.43, 1.20-1.22). Acting is uniformly random so
    that both actions are learned equally. Measured without mistakes: errors at most 0.04 over 4 seeds.
    """
    expected = np.array(probe_values(PROBE_GAMMA, ending))
    for mistake in MISTAKES[ending]:
        assert np.abs(np.array(probe_values(PROBE_GAMMA, mistake)) - expected).max() > 2 * PROBE_TOLERANCE
    q_values = probe_action_values(env_id)
    assert (np.abs(q_values - expected[None, :, None]) < PROBE_TOLERANCE).all(), (q_values, expected)
