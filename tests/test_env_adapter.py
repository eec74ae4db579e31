"""Facts about the environment adapter: auto-reset, termination vs truncation, episode statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.trainer import ConfigError
from rlzoo.env_adapter import VecEnv, mean_last_episode_return
from rlzoo.envs import make_env


def rollout(vec_env, num_steps, seed=0, action_fn=None):
    """Random (or `action_fn`) actions for `num_steps`; returns the final state and the stacked TimeSteps."""
    spec = vec_env.spec

    def random_action(key):
        if spec.discrete:
            return jax.random.randint(key, (vec_env.num_envs,), 0, spec.num_actions)
        return 3.0 * jax.random.normal(key, (vec_env.num_envs, spec.num_actions))

    action_fn = action_fn or random_action

    def body(state, key):
        action_key, step_key = jax.random.split(key)
        state, ts = vec_env.step(step_key, state, action_fn(action_key))
        return state, ts

    @jax.jit
    def run(key):
        state, obs = vec_env.reset(key)
        final, steps = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return obs, final, steps

    return run(jax.random.PRNGKey(seed))


def test_gymnax_pendulum_truncates_at_its_time_limit_and_never_terminates():
    env = VecEnv(make_env("Pendulum-v1"), num_envs=3)
    _, _, steps = rollout(env, 450)
    truncated = np.asarray(steps.truncated)
    assert not np.asarray(steps.terminated).any()
    # Pendulum-v1's limit is 200 steps: episodes end at steps 200 and 400 (indices 199, 399).
    assert set(np.nonzero(truncated[:, 0])[0]) == {199, 399}
    assert (np.asarray(steps.episode_length)[truncated] == 200).all()


def test_final_observation_is_kept_apart_from_the_reset_observation():
    env = VecEnv(make_env("CartPole-v1"), num_envs=4)
    _, _, steps = rollout(env, 300)
    done = np.asarray(steps.terminated | steps.truncated)
    obs, final_obs = np.asarray(steps.obs), np.asarray(steps.final_obs)
    assert done.sum() > 5
    np.testing.assert_array_equal(obs[~done], final_obs[~done])
    assert not np.allclose(obs[done], final_obs[done])
    # CartPole terminates when the pole falls: |theta| > 12 degrees or |x| > 2.4 in the final observation.
    fallen = (np.abs(final_obs[done][:, 2]) > 0.2094) | (np.abs(final_obs[done][:, 0]) > 2.4)
    assert fallen.all()
    # A reset observation lies within +-0.05 in every coordinate.
    assert (np.abs(obs[done]) <= 0.05).all()


def test_episode_return_statistics_equal_summed_rewards():
    env = VecEnv(make_env("CartPole-v1"), num_envs=2)
    _, final_state, steps = rollout(env, 200, seed=3)
    rewards, done = np.asarray(steps.reward), np.asarray(steps.terminated | steps.truncated)
    for e in range(2):
        ends = np.nonzero(done[:, e])[0]
        starts = np.concatenate([[0], ends[:-1] + 1])
        expected = [rewards[s:t + 1, e].sum() for s, t in zip(starts, ends)]
        np.testing.assert_allclose(np.asarray(steps.episode_return)[ends, e], expected)
        assert float(final_state.last_episode_return[e]) == pytest.approx(expected[-1])
    assert float(mean_last_episode_return(final_state)) == pytest.approx(
        float(np.mean(np.asarray(final_state.last_episode_return))))


def test_observation_normalisation_centres_and_scales_observations():
    env = VecEnv(make_env("Pendulum-v1"), num_envs=16, normalize_obs=True, normalize_reward=True)
    _, _, steps = rollout(env, 600)
    late = np.asarray(steps.obs)[300:].reshape(-1, 3)
    assert np.abs(late.mean(0)).max() < 0.3
    assert np.all(np.abs(late.std(0) - 1.0) < 0.3)
    # Reward normalisation divides by a running std of the discounted return: rewards shrink.
    assert np.abs(np.asarray(steps.reward)[300:]).mean() < 1.0


def test_continuous_actions_are_clipped_to_the_action_space():
    base = make_env("Pendulum-v1")
    big = lambda key: jnp.full((2, 1), 100.0)  # noqa: E731
    exact = lambda key: jnp.full((2, 1), 2.0)  # noqa: E731
    _, _, clipped = rollout(VecEnv(base, 2), 20, action_fn=big)
    _, _, at_bound = rollout(VecEnv(base, 2), 20, action_fn=exact)
    np.testing.assert_allclose(np.asarray(clipped.reward), np.asarray(at_bound.reward))


def test_brax_env_terminates_truncates_and_resets():
    """One rollout, as compiling brax is the cost: envs 0-1 push with zero force, envs 2-3 with full force."""
    env = VecEnv(make_env("brax/inverted_pendulum", max_episode_steps=30), num_envs=4)
    _, _, steps = rollout(env, 100, action_fn=lambda key: jnp.array([[0.0], [0.0], [1.0], [1.0]]))
    truncated, terminated = np.asarray(steps.truncated), np.asarray(steps.terminated)
    # With zero force the pole stays up for at least a while: the 30-step limit truncates.
    assert truncated[29, :2].all() and not terminated[:29, :2].any()
    assert (np.asarray(steps.episode_length)[truncated] <= 30).all()
    assert terminated[:, 2:].any(axis=0).all()  # pushed with full force, each pole falls


def test_own_random_walk_is_registered_with_its_true_values():
    env = make_env("RandomWalk19-v0")
    assert env.spec.obs_shape == (19,) and env.spec.discrete
    np.testing.assert_allclose(np.asarray(env.env.true_values()), np.arange(-18, 19, 2) / 20, atol=1e-6)
    _, _, steps = rollout(VecEnv(env, 8), 400)
    terminal_rewards = np.asarray(steps.reward)[np.asarray(steps.terminated)]
    assert set(np.unique(terminal_rewards)) <= {-1.0, 1.0} and len(terminal_rewards) > 0


@pytest.mark.parametrize("env_id, fragment", [
    ("CartPol-v1", "did you mean 'CartPole-v1'"),
    ("brax/hoper", "did you mean 'brax/hopper'"),
    ("NoSuchEnv", "env_id 'NoSuchEnv' is unknown"),
])
def test_unknown_env_id_is_a_clear_error(env_id, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_env(env_id)


def test_unknown_brax_backend_is_a_clear_error():
    with pytest.raises(ConfigError, match="backend 'bullet'"):
        make_env("brax/hopper", backend="bullet")
