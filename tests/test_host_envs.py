"""Host environments (`rlzoo.host_envs`): Gymnasium and Atari envs stepped outside the compiled program through
callbacks. Against the same Gymnasium envs stepped by hand: spec, step and auto-reset, truncation with the true
final observation, episode returns; jit, and vmap over members; PPO and PQN learn CartPole through the host path;
and the errors (unknown ids, a missing extra, spaces we do not take, --resume)."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import host_envs
from rlzoo.env_adapter import VecEnv
from rlzoo.envs import make_env
from rlzoo.trainer import ConfigError

LIMIT, STEPS, NUM_ENVS = 12, 40, 3  # CartPole episodes also end earlier, by falling over (terminations)


def alternating_actions() -> np.ndarray:
    """[STEPS, NUM_ENVS]: env 0 always pushes right (the pole falls within the limit, a termination), env 1
    alternates every step (it balances until the limit, a truncation), env 2 every 2 steps."""
    t = np.arange(STEPS)
    return np.stack([np.ones_like(t), t % 2, t // 2 % 2], axis=1).astype(np.int32)


def host_rollout_unjitted(vec_env: VecEnv, key: jax.Array, actions: np.ndarray):
    """Reset, then `actions` in a scan; returns the reset obs and the stacked time steps."""
    state, obs = vec_env.reset(key)
    keys = jax.random.split(key, len(actions))
    _, steps = jax.lax.scan(lambda s, xs: vec_env.step(xs[0], s, xs[1]), state, (keys, jnp.asarray(actions)))
    return obs, steps


def host_rollout(vec_env: VecEnv, key: jax.Array, actions: np.ndarray):
    return jax.jit(lambda k: host_rollout_unjitted(vec_env, k, actions))(key)


def hand_rollout(env_id: str, key: jax.Array, actions: np.ndarray, **make_kwargs):
    """The same envs stepped by hand: seeded from VecEnv's per-env keys, reset when an episode ends."""
    envs = [gymnasium.make(env_id, **make_kwargs) for _ in range(actions.shape[1])]
    first = [env.reset(seed=host_envs._seed_of(np.asarray(k)))[0]
             for env, k in zip(envs, jax.random.split(key, actions.shape[1]))]
    rows = []
    for step_actions in actions:
        row = []
        for env, action in zip(envs, step_actions):
            obs, reward, terminated, truncated, _ = env.step(int(action))
            next_obs = env.reset()[0] if terminated or truncated else obs
            row.append((next_obs, reward, terminated, truncated and not terminated, obs))
        rows.append(row)
    return np.asarray(first), [np.asarray([r[i] for r in row]) for row in rows for i in range(5)]


@pytest.fixture(scope="module")
def cartpole():
    vec_env = VecEnv(make_env("gymnasium/CartPole-v1", max_episode_steps=LIMIT), NUM_ENVS)
    key = jax.random.PRNGKey(3)
    return vec_env, key, host_rollout(vec_env, key, alternating_actions())


def test_the_spec_maps_gymnasium_spaces():
    cartpole = make_env("gymnasium/CartPole-v1").spec
    assert (cartpole.obs_shape, cartpole.discrete, cartpole.num_actions, cartpole.max_episode_steps, cartpole.host) \
        == ((4,), True, 2, 500, True)
    pendulum = make_env("gymnasium/Pendulum-v1").spec
    assert (pendulum.discrete, pendulum.num_actions, pendulum.action_low, pendulum.action_high,
            pendulum.max_episode_steps) == (False, 1, -2.0, 2.0, 200)
    assert make_env("gymnasium/CartPole-v1", max_episode_steps=7).spec.max_episode_steps == 7


def test_steps_resets_truncations_and_final_observations_equal_gymnasium_by_hand(cartpole):
    _, key, (first_obs, steps) = cartpole
    hand_first, hand = hand_rollout("CartPole-v1", key, alternating_actions(), max_episode_steps=LIMIT)
    np.testing.assert_array_equal(first_obs, hand_first)
    for t in range(STEPS):
        obs, reward, terminated, truncated, final_obs = hand[5 * t:5 * t + 5]
        np.testing.assert_array_equal(np.asarray(steps.obs[t]), obs, err_msg=f"step {t}")
        np.testing.assert_array_equal(np.asarray(steps.final_obs[t]), final_obs, err_msg=f"step {t}")
        np.testing.assert_array_equal(np.asarray(steps.reward[t]), reward)
        np.testing.assert_array_equal(np.asarray(steps.terminated[t]), terminated)
        np.testing.assert_array_equal(np.asarray(steps.truncated[t]), truncated)
    terminated, truncated = np.asarray(steps.terminated), np.asarray(steps.truncated)
    assert terminated.any() and truncated.any(), "the rollout must hold both kinds of episode end"


def test_episode_returns_equal_a_hand_loop_over_the_rewards(cartpole):
    _, _, (_, steps) = cartpole
    rewards, done = np.asarray(steps.reward), np.asarray(steps.terminated | steps.truncated)
    running = np.zeros(NUM_ENVS)
    for t in range(STEPS):
        running += rewards[t]
        np.testing.assert_allclose(np.asarray(steps.episode_return[t])[done[t]], running[done[t]])
        running[done[t]] = 0.0


def test_members_vmapped_step_their_own_envs_as_each_would_alone():
    vec_env = VecEnv(make_env("gymnasium/CartPole-v1", max_episode_steps=LIMIT), NUM_ENVS)
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    actions = alternating_actions()
    _, together = jax.jit(jax.vmap(lambda k: host_rollout_unjitted(vec_env, k, actions)))(keys)
    for member, key in enumerate(keys):
        _, alone = host_rollout(vec_env, key, actions)
        np.testing.assert_array_equal(np.asarray(together.obs[member]), np.asarray(alone.obs))
        np.testing.assert_array_equal(np.asarray(together.episode_return[member]), np.asarray(alone.episode_return))


def test_evaluation_vmapped_over_members_that_finish_at_different_steps_equals_each_alone():
    """Evaluation stops a member's loop when its episodes end; vmap still runs the body for it while the
    others go on, so its envs are parked (`HostEnv.park`) rather than stepped behind the program's back."""
    from rlzoo.evaluate import evaluate

    env = make_env("gymnasium/CartPole-v1")
    random_policy = lambda key, obs: jax.random.randint(key, obs.shape[:1], 0, 2)  # noqa: E731
    keys = jax.random.split(jax.random.PRNGKey(11), 3)
    together = jax.jit(jax.vmap(lambda k: evaluate(random_policy, env, k, 4, 500)))(keys)
    lengths = np.asarray(together.episode_length)
    assert len(set(lengths.max(axis=1))) > 1, lengths  # the members stop at different steps
    for member, key in enumerate(keys):
        alone = jax.jit(lambda k: evaluate(random_policy, env, k, 4, 500))(key)
        np.testing.assert_array_equal(lengths[member], np.asarray(alone.episode_length))
        np.testing.assert_array_equal(np.asarray(together.episode_return[member]), np.asarray(alone.episode_return))


def test_a_step_out_of_order_is_refused():
    vec_env = VecEnv(make_env("gymnasium/CartPole-v1"), 2)
    state, _ = jax.jit(vec_env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(vec_env.step)
    step(jax.random.PRNGKey(1), state, jnp.zeros(2, jnp.int32))
    with pytest.raises(Exception, match="out of order"):  # the same state again: a replayed step
        jax.block_until_ready(step(jax.random.PRNGKey(1), state, jnp.zeros(2, jnp.int32)))


@pytest.mark.parametrize("algo", ["ppo", "pqn"])
def test_ppo_and_pqn_learn_cartpole_through_the_host_path(algo):
    """Each on gymnasium/CartPole-v1 at 65,536 steps with its defaults, 2 vmapped seeds: the greedy policy's mean
    return over 8 episodes is at least 120 on each seed, where a random policy scores ~22.

    Measured on seed_keys(0, 2): PPO 454 and 481, PQN 331 and 191."""
    import importlib

    from rlzoo.evaluate import greedy_member_returns
    from rlzoo.sweep import seed_keys

    module = importlib.import_module(f"rlzoo.algorithms.{algo}")
    trainer = module.make_train(module.Config(env_id="gymnasium/CartPole-v1", total_timesteps=65_536))
    hparams = jax.tree.map(lambda x: jnp.full((2,), x), module.HParams())
    final, _ = jax.jit(trainer.members)(seed_keys(0, 2), hparams)
    after = np.asarray(greedy_member_returns(trainer, final, jax.random.PRNGKey(7), 8))
    assert (after >= 120).all(), after


def test_atari_has_the_standard_preprocessing_and_steps_like_gymnasium():
    pytest.importorskip("ale_py")
    env = make_env("atari/Pong")
    assert (env.spec.obs_shape, env.spec.num_actions, env.spec.max_episode_steps) == ((84, 84, 4), 6, 27_000)
    vec_env = VecEnv(env, 2)
    key = jax.random.PRNGKey(0)
    actions = np.ones((5, 2), np.int32)
    first_obs, steps = host_rollout(vec_env, key, actions)
    assert first_obs.dtype == jnp.uint8 and steps.obs.shape == (5, 2, 84, 84, 4)
    by_hand = env.make()
    obs, _ = by_hand.reset(seed=host_envs._seed_of(np.asarray(jax.random.split(key, 2)[0])))
    np.testing.assert_array_equal(np.asarray(first_obs[0]), np.moveaxis(obs, 0, -1))
    for t in range(5):
        obs = by_hand.step(1)[0]
        np.testing.assert_array_equal(np.asarray(steps.obs[t, 0]), np.moveaxis(obs, 0, -1))


def test_unknown_ids_suggest_close_matches():
    with pytest.raises(ConfigError, match="did you mean 'gymnasium/CartPole-v1'"):
        make_env("gymnasium/CartPole-v9")
    pytest.importorskip("ale_py")
    with pytest.raises(ConfigError, match="did you mean 'atari/Breakout'"):
        make_env("atari/Breakot")


def test_a_missing_atari_package_names_the_extra(monkeypatch):
    from rlzoo import env_backends

    real = env_backends.importlib.import_module

    def no_ale(name):
        if name == "ale_py":
            raise ImportError("No module named 'ale_py'")
        return real(name)

    monkeypatch.setattr(env_backends.importlib, "import_module", no_ale)
    with pytest.raises(ConfigError, match=r"pip install 'rlzoo\[atari\]'"):
        make_env("atari/Breakout")


def test_spaces_the_algorithms_do_not_take_are_refused():
    with pytest.raises(ConfigError, match="Tuple observation space; allowed: Box"):
        make_env("gymnasium/Blackjack-v1")


def test_a_host_run_refuses_resume(tmp_path):
    from rlzoo.algorithms import ppo
    from rlzoo.runner import RunOptions, run_experiment

    config = ppo.Config(env_id="gymnasium/CartPole-v1", total_timesteps=2048)
    options = RunOptions(run_dir=str(tmp_path / "run"), num_chunks=1, eval_episodes=2, progress=False)
    summary = run_experiment("ppo", ppo.make_train, config, ppo.HParams(), options)
    assert summary["env_steps"] == 2048
    with pytest.raises(ConfigError, match="steps on the host"):
        run_experiment("ppo", ppo.make_train, config, ppo.HParams(),
                       RunOptions(run_dir=str(tmp_path / "run"), resume=str(tmp_path / "run"), progress=False))
