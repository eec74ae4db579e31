"""Facts about PPO: it learns, its values on the probe envs are the closed-form ones, sweeps compile once and
match separate runs, runs are reproducible."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from rlzoo.algorithms.ppo import Config, HParams, make_train
from rlzoo.envs.probes import MISTAKES, probe_values
from rlzoo.networks import ActorCritic
from rlzoo.sweep import expand_members, make_grid, run_sweep, seed_keys

ROOT = Path(__file__).resolve().parent.parent

# Small budget shared by the sweep, determinism and device tests: 16 updates of 4 x 128 steps.
SMALL = Config(total_timesteps=16 * 512)


@pytest.fixture(scope="module")
def cartpole_two_seeds():
    """PureJaxRL's CartPole-v1 defaults, 5e5 steps, 2 vmapped seeds (trained once for this module)."""
    train = make_train(Config())
    keys = seed_keys(0, 2)
    _, metrics = jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, HParams())
    return jax.device_get(metrics)


@pytest.mark.slow
def test_ppo_solves_cartpole_within_5e5_steps_on_each_of_two_seeds(cartpole_two_seeds):
    final_return = cartpole_two_seeds["episode_return"][:, -1]
    assert cartpole_two_seeds["env_steps"][0, -1] <= 500_000
    assert (final_return >= 475).all(), final_return


@pytest.mark.slow
def test_ppo_learns_continuous_pendulum():
    """gymnax Pendulum-v1 (brax compiles too slowly for a CPU test): >= -300 in 3e5 steps."""
    config = Config(env_id="Pendulum-v1", total_timesteps=300_000, num_envs=32, num_steps=64,
                    num_epochs=10, num_minibatches=8)
    hparams = HParams(lr=1e-3, gamma=0.95, gae_lambda=0.95, ent_coef=0.0)
    _, metrics = jax.jit(jax.vmap(make_train(config), in_axes=(0, None)))(seed_keys(0, 2), hparams)
    final_return = np.asarray(metrics["episode_return"][:, -1])
    assert (final_return >= -300).all(), final_return


def _count_compiles(fun_name_fragment):
    events = []
    monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: events.append(kw.get("fun_name", ""))
        if event == "/jax/core/compile/backend_compile_duration" else None)
    return lambda: sum(fun_name_fragment in name for name in events)


def test_lr_sweep_of_three_values_and_two_seeds_compiles_once_and_equals_separate_runs():
    train = make_train(SMALL)
    lrs = [1e-4, 3e-4, 1e-3]
    compiles = _count_compiles("sweep_members")
    result = run_sweep(train, HParams(), {"lr": lrs}, seed=0, num_seeds=2)
    assert compiles() == 1
    swept_metrics = result.per_config(result.outputs[1])
    swept = swept_metrics["episode_return"]
    assert swept.shape == (3, 2, 16)
    assert result.labels == ["lr=0.0001", "lr=0.0003", "lr=0.001"]

    separate = jax.jit(train)
    for c, lr in enumerate(lrs):
        for s, key in enumerate(seed_keys(0, 2)):
            _, metrics = separate(key, HParams(lr=jnp.float32(lr)))
            np.testing.assert_allclose(swept[c, s], metrics["episode_return"], rtol=1e-5)
            np.testing.assert_allclose(swept_metrics["value_loss"][c, s],
                                       metrics["value_loss"], rtol=1e-4)
    # The learning rate really differs between configurations.
    assert not np.allclose(swept[0], swept[2])


def test_same_seed_twice_gives_bit_identical_metrics():
    first = jax.device_get(jax.jit(make_train(SMALL))(jax.random.PRNGKey(7), HParams())[1])
    second = jax.device_get(jax.jit(make_train(SMALL))(jax.random.PRNGKey(7), HParams())[1])
    other = jax.device_get(jax.jit(make_train(SMALL))(jax.random.PRNGKey(8), HParams())[1])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert not np.array_equal(first["value_loss"], other["value_loss"])


DEVICE_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
    from rlzoo.algorithms.ppo import Config, HParams, make_train
    from rlzoo.sweep import run_sweep
    result = run_sweep(make_train(Config(total_timesteps=16 * 512)), HParams(), {"lr": [3e-4, 1e-3]},
                       seed=0, num_seeds=2)
    state, metrics = result.outputs
    leaf = jax.tree.leaves(state.params)[0]
    np.savez(sys.argv[2], devices=len(leaf.sharding.device_set),
             **{k: np.asarray(v) for k, v in metrics.items()},
             params=np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]))
""")


def _run_on_devices(num_devices, tmp_path):
    out = tmp_path / f"devices{num_devices}.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(num_devices), str(out)], check=True, env=env,
                   cwd=ROOT, timeout=600)
    return np.load(out)


def test_sweep_sharded_over_four_devices_equals_one_device(tmp_path):
    four, one = _run_on_devices(4, tmp_path), _run_on_devices(1, tmp_path)
    assert int(four["devices"]) == 4 and int(one["devices"]) == 1
    for name in ("episode_return", "value_loss", "policy_loss", "params"):
        # Partitioned programs may order float sums differently, and the rounding differences carry through the
        # 16 training updates: equal to accumulated float32 rounding (seen: 1.2e-5 relative on a value loss of 94,
        # 1.8e-5 absolute on parameters),
        # not bit for bit. A wrong member-to-device mapping would differ by whole returns.
        np.testing.assert_allclose(four[name], one[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_grid_members_are_configuration_major_with_shared_seeds():
    grid = make_grid(HParams(), {"lr": [1.0, 2.0], "gamma": [0.9, 0.99]})
    keys, hparams = expand_members(seed_keys(0, 3), grid.hparams)
    assert grid.labels == ["lr=1,gamma=0.9", "lr=1,gamma=0.99", "lr=2,gamma=0.9", "lr=2,gamma=0.99"]
    np.testing.assert_allclose(hparams.lr, [1.0] * 6 + [2.0] * 6)
    np.testing.assert_array_equal(keys[0], keys[3])  # seed 0 of configuration 0 and of configuration 1
    # Labels are plain strings that survive summary.json unchanged, one per configuration.
    assert json.loads(json.dumps(grid.labels)) == grid.labels
    assert all(type(label) is str for label in grid.labels) and len(set(grid.labels)) == 4


@pytest.mark.parametrize("env_id", ["Breakout-MinAtar", "brax/inverted_pendulum"])
def test_ppo_runs_end_to_end_on_minatar_with_a_cnn_and_on_brax(env_id):
    config = Config(env_id=env_id, total_timesteps=2 * 8 * 32, num_envs=8, num_steps=32)
    _, metrics = jax.jit(make_train(config))(jax.random.PRNGKey(0), HParams())
    assert metrics["env_steps"][-1] == 512
    for name in ("policy_loss", "value_loss", "entropy"):
        assert np.isfinite(np.asarray(metrics[name])).all(), name


PROBE_GAMMA = 0.5
PROBE_TOLERANCE = 0.08
"""Each learned V(s) must be this close to the closed form; every classic mistake is >= 2x as far off."""


def probe_state_values(env_id: str) -> np.ndarray:
    """V(phase 0), V(phase 1) learned by PPO (gamma 0.5, GAE lambda 0.9) on a probe env, 2 vmapped seeds: [2, 2]."""
    config = Config(env_id=env_id, normalize="none", hidden_sizes=(16,), total_timesteps=32 * 8 * 32, num_envs=8,
                    num_steps=32, num_minibatches=2, num_epochs=4)
    hparams = HParams(gamma=PROBE_GAMMA, gae_lambda=0.9, lr=1e-2, ent_coef=0.0)
    state, _ = jax.jit(jax.vmap(make_train(config), in_axes=(0, None)))(seed_keys(0, 2), hparams)
    network = ActorCritic((2,), 2, True, config.hidden_sizes, config.activation)
    return np.asarray(jax.vmap(lambda p: network.apply(p, jnp.eye(2), method=ActorCritic.value))(state.params))


@pytest.mark.parametrize("env_id, ending", [("ProbeTerminate-v0", "terminate"), ("ProbeTruncate-v0", "truncate")])
def test_ppo_learns_the_closed_form_values_of_the_probe_envs(env_id, ending):
    """V(0) and V(1) after a short training are within 0.08 of `probe_values(0.5, ending)` on each of 2 seeds.

    Catches each classic mistake, checked by injecting it into the env's time steps (learned V(0), V(1)):
    ignoring termination on ProbeTerminate (0.67, 1.33 instead of 0.29, 1.14); on ProbeTruncate, treating
    truncation as termination (0.25, 1.02 instead of 0.67, 1.33) or bootstrapping from the reset observation
    instead of `final_obs` (0.37, 1.10). With GAE lambda 0.9 the mistaken values are not quite the one-step
    ones of `probe_values`, but as far off. Measured without mistakes: errors at most 0.04 over 4 seeds.
    """
    expected = np.array(probe_values(PROBE_GAMMA, ending))
    for mistake in MISTAKES[ending]:
        assert np.abs(np.array(probe_values(PROBE_GAMMA, mistake)) - expected).max() > 2 * PROBE_TOLERANCE
    values = probe_state_values(env_id)
    assert (np.abs(values - expected) < PROBE_TOLERANCE).all(), (values, expected)
