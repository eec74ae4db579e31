"""Facts about the POPGym memory tasks: the perfect agent gets return 1, guessing does not, the
observations hide what the task says they hide, and every id is registered with the env adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.envs import make_env
from rlzoo.envs import REGISTRY
from rlzoo.envs.memory import LEVELS, Autoencode, CountRecall, RepeatFirst, RepeatPrevious

CARD_TASKS = {
    "RepeatPrevious-Easy": (RepeatPrevious(1, 4), 52), "RepeatPrevious-Medium": (RepeatPrevious(2, 32), 104),
    "RepeatFirst-Easy": (RepeatFirst(1), 52), "CountRecall-Easy": (CountRecall(1), 52),
    "CountRecall-Medium": (CountRecall(2), 104), "Autoencode-Easy": (Autoencode(1), 104),
}


def play(env, key, policy, num_steps):
    """Rewards and done flags of `num_steps` steps of `policy(state, key)` from a reset."""
    params = env.default_params
    reset_key, run_key = jax.random.split(key)
    _, state = env.reset(reset_key, params)

    def step(state, key):
        policy_key, step_key = jax.random.split(key)
        _, state, reward, terminated, truncated, _ = env.step(step_key, state, policy(state, policy_key), params)
        return state, (reward, terminated, truncated)

    return jax.lax.scan(step, state, jax.random.split(run_key, num_steps))[1]


@pytest.mark.parametrize("env_id", list(CARD_TASKS))
def test_the_perfect_card_agent_gets_return_one_in_an_episode_of_the_stated_length(env_id):
    env, length = CARD_TASKS[env_id]
    rewards, terminated, truncated = jax.jit(lambda k: play(env, k, lambda s, _: env.optimal_action(s), length))(
        jax.random.PRNGKey(0))
    np.testing.assert_allclose(rewards.sum(), 1.0, atol=1e-5)
    assert np.asarray(terminated).nonzero()[0].tolist() == [length - 1]  # ends by termination, once
    assert not np.asarray(truncated).any()


@pytest.mark.parametrize("env_id", ["RepeatPrevious-Easy", "RepeatFirst-Easy", "Autoencode-Easy"])
def test_guessing_suits_gets_return_near_minus_one_half(env_id):
    """A uniformly random suit is right 1/4 of the time: expected return 1/4 - 3/4 = -1/2."""
    env, length = CARD_TASKS[env_id]
    guess = lambda s, k: jax.random.randint(k, (), 0, 4)  # noqa: E731
    returns = jax.jit(jax.vmap(lambda k: play(env, k, guess, length)[0].sum()))(
        jax.random.split(jax.random.PRNGKey(1), 256))
    assert abs(float(returns.mean()) + 0.5) < 0.03, float(returns.mean())


def test_repeat_previous_asks_for_the_suit_shown_k_steps_earlier():
    env = RepeatPrevious(1, 4)
    obs, state = env.reset(jax.random.PRNGKey(2), env.default_params)
    shown = [int(obs.argmax())]
    for t in range(10):
        answer = int(env.optimal_action(state))
        if t >= 4:
            assert answer == shown[t - 4]
        obs, state, *_ = env.step(jax.random.PRNGKey(t), state, answer, env.default_params)
        shown.append(int(obs.argmax()))


def test_a_deck_holds_each_suit_thirteen_times_and_count_recall_counts_the_query_rank():
    env = CountRecall(1)
    obs, state = env.reset(jax.random.PRNGKey(3), env.default_params)
    assert np.bincount(np.asarray(RepeatFirst(1).reset(jax.random.PRNGKey(3))[1].cards), minlength=4).tolist() == [13] * 4
    dealt = []
    for t in range(20):
        dealt.append(int(obs[:13].argmax()))
        query = int(obs[13:].argmax())
        assert query in dealt  # the query is a rank seen so far
        assert int(env.optimal_action(state)) == dealt.count(query)
        obs, state, *_ = env.step(jax.random.PRNGKey(t), state, 0, env.default_params)


def test_autoencode_hides_the_cards_in_the_play_phase_and_asks_for_them_in_reverse():
    env = Autoencode(1)
    obs, state = env.reset(jax.random.PRNGKey(4), env.default_params)
    shown = []
    for t in range(104):
        if t < 52:
            assert float(obs[4]) == 0.0
            shown.append(int(obs[:4].argmax()))
        else:
            assert float(obs[4]) == 1.0 and float(obs[:4].sum()) == 0.0
            assert int(env.optimal_action(state)) == shown[103 - t]
        obs, state, *_ = env.step(jax.random.PRNGKey(t), state, 0, env.default_params)


def test_stateless_cartpole_shows_position_and_angle_only_and_scales_the_return_to_one():
    env = make_env("StatelessCartPole-Easy")
    assert env.spec.obs_shape == (2,) and env.spec.max_episode_steps == 200
    state, obs = env.reset(jax.random.PRNGKey(5))
    np.testing.assert_allclose(obs, [state.x, state.theta])

    def balance(carry, key):  # a full-state controller: push toward the falling side
        state, total = carry
        action = (state.theta + 0.5 * state.theta_dot + 0.01 * state.x + 0.1 * state.x_dot > 0).astype(jnp.int32)
        state, _, reward, terminated, truncated, _ = env.step(key, state, action)
        return (state, total + reward), (terminated, truncated)

    (_, total), (terminated, truncated) = jax.lax.scan(balance, (state, 0.0), jax.random.split(jax.random.PRNGKey(6), 200))
    np.testing.assert_allclose(total, 1.0, atol=1e-5)  # 200 steps of reward 1/200
    assert bool(truncated[-1]) and not bool(terminated.any())


def test_noisy_variants_add_noise_of_the_stated_scale():
    for level, std in zip(LEVELS, (0.1, 0.2, 0.3)):
        clean, noisy = make_env(f"StatelessCartPole-{level}"), make_env(f"NoisyStatelessCartPole-{level}")
        keys = jax.random.split(jax.random.PRNGKey(7), 4000)
        diff = jax.vmap(lambda k: noisy.reset(k)[1] - clean.reset(k)[1])(keys)
        # Same reset key and split: the start states agree, so the difference is the noise alone.
        assert abs(float(diff.std()) - std) < 0.1 * std, (level, float(diff.std()))


def test_stateless_pendulum_shows_cos_and_sin_and_returns_lie_in_minus_one_to_zero():
    env = make_env("StatelessPendulum-Easy")
    assert env.spec.obs_shape == (2,) and not env.spec.discrete
    state, obs = env.reset(jax.random.PRNGKey(8))
    np.testing.assert_allclose(obs, [jnp.cos(state.theta), jnp.sin(state.theta)], atol=1e-6)

    def step(state, key):
        state, _, reward, *_ = env.step(key, state, jnp.asarray([2.0]))
        return state, reward

    rewards = jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(9), 200))[1]
    assert -1.0 <= float(rewards.sum()) < 0.0 and float(rewards.min()) >= -1.0 / 200


def test_every_task_and_level_is_registered_with_the_env_adapter():
    for task in ("RepeatPrevious", "RepeatFirst", "CountRecall", "Autoencode", "StatelessCartPole",
                 "NoisyStatelessCartPole", "StatelessPendulum", "NoisyStatelessPendulum"):
        for level in LEVELS:
            assert f"{task}-{level}" in REGISTRY
    spec = make_env("RepeatPrevious-Hard").spec
    assert spec.obs_shape == (4,) and spec.num_actions == 4 and spec.max_episode_steps == 3 * 52 + 1


def test_meta_wrapper_runs_trials_under_one_projection_and_draws_a_new_one_per_meta_episode():
    from rlzoo.envs.meta import MetaRLEnv

    env = MetaRLEnv(make_env("CartPole-v1"), num_trials=3)
    assert env.spec.obs_shape == (4 + 2 + 2,)
    state, obs = env.reset(jax.random.PRNGKey(10))
    np.testing.assert_allclose(obs[:4], state.obs_projection @ env.env.reset(jax.random.split(
        jax.random.PRNGKey(10))[1])[1], atol=1e-6)

    def step(state, key):
        action_key, step_key = jax.random.split(key)
        action = jax.random.randint(action_key, (), 0, 2)
        next_state, obs, reward, terminated, truncated, final = env.step(step_key, state, action)
        return next_state, (obs, reward, terminated, truncated, state.obs_projection, action, final)

    _, (obs, reward, terminated, truncated, projection, action, final) = jax.jit(
        lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.PRNGKey(11), 600)))(state)
    trial_flag = np.asarray(final[:, -1])
    ends = np.asarray(terminated).nonzero()[0]
    assert len(ends) >= 2 and not np.asarray(truncated).any()
    for start, end in zip(np.r_[0, ends[:-1] + 1], ends):
        assert trial_flag[start:end + 1].sum() == 3 and trial_flag[end] == 1  # the 3rd trial's end ends it
        np.testing.assert_array_equal(projection[start], projection[end])  # one projection per meta-episode
    assert not np.allclose(projection[0], projection[ends[0] + 1])  # a new one after
    np.testing.assert_allclose(final[:, 4:6], jax.nn.one_hot(action, 2))  # previous action, one-hot
    np.testing.assert_allclose(final[:, 6], reward)  # previous reward


def test_meta_wrapper_projects_continuous_actions_and_works_over_brax():
    env = make_env("meta/Pendulum-v1")
    assert env.spec.obs_shape == (3 + 1 + 2,) and env.spec.max_episode_steps == 4 * 200
    state, _ = env.reset(jax.random.PRNGKey(12))
    assert state.action_projection.shape == (1, 1)
    brax_env = make_env("meta/brax/inverted_pendulum")
    state, obs = brax_env.reset(jax.random.PRNGKey(13))
    assert obs.shape == brax_env.spec.obs_shape == (4 + 1 + 2,)
    _, obs, *_ = jax.jit(brax_env.step)(jax.random.PRNGKey(14), state, jnp.ones((1,)))
    assert np.isfinite(np.asarray(obs)).all()


def test_trial_returns_split_a_meta_episode_at_the_trial_done_flags():
    from rlzoo.envs.meta import trial_returns

    rewards = jnp.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    done = jnp.array([[False], [True], [True], [False], [True], [False]])  # trials end at steps 1, 2, 4
    np.testing.assert_allclose(trial_returns(rewards, done, 3), [[3.0, 3.0, 9.0]])  # step 5 is the next meta-episode
    np.testing.assert_allclose(trial_returns(rewards, done, 4), [[3.0, 3.0, 9.0, 6.0]])


def test_trial_returns_of_evaluated_meta_episodes_add_up_to_the_episode_return():
    """Random play of meta/CartPole (reward 1 per step): each trial's return is its length, and they sum to the
    meta-episode's return that `evaluate` reports."""
    from rlzoo.envs.meta import MetaRLEnv, trial_done_flag, trial_returns
    from rlzoo.evaluate import evaluate

    env = MetaRLEnv(make_env("CartPole-v1"), num_trials=3)
    act = lambda key, obs: jax.random.randint(key, obs.shape[:1], 0, 2)  # noqa: E731
    result = jax.jit(lambda key: evaluate(act, env, key, 8, 400, record=lambda ts: (
        ts.reward, trial_done_flag(ts.final_obs))))(jax.random.PRNGKey(3))
    rewards, done = result.trace
    per_trial = np.asarray(trial_returns(rewards, done, 3))
    np.testing.assert_allclose(per_trial.sum(1), result.episode_return)
    assert per_trial.shape == (8, 3) and (per_trial >= 8).all() and (per_trial < 100).all()  # random CartPole
    first_trial_length = np.argmax(np.asarray(done), axis=0) + 1
    np.testing.assert_allclose(per_trial[:, 0], first_trial_length)
