"""Tests for rlzoo.replay against hand-built episodes and plain-Python loops."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import replay, returns
from rlzoo.trainer import ConfigError

NUM_ENVS = 2
STEPS = 12  # rows written in the hand-built stream
GAMMA = 0.5


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array


def example(obs_shape=(2,)) -> Transition:
    return Transition(
        jnp.zeros(obs_shape, jnp.uint8), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
        jnp.zeros((), bool), jnp.zeros((), bool), jnp.zeros(obs_shape, jnp.uint8),
    )


# ---------------------------------------------------------------------------
# A hand-built stream of 12 steps in 2 envs.
#   env 0: terminated at t=2, truncated at t=6, terminated at t=9, running from t=10.
#   env 1: truncated at t=3, terminated and truncated at t=7, running from t=8.
# Rewards are 10^(t mod 5) in env 0 and 2 * 10^(t mod 5) in env 1, so every sum is
# recognisable; obs = (t, env) and next_obs = (t + 1, env) (the true next obs).
# ---------------------------------------------------------------------------

TERMINATED = np.zeros((STEPS, NUM_ENVS), bool)
TRUNCATED = np.zeros((STEPS, NUM_ENVS), bool)
TERMINATED[[2, 9], 0] = True
TRUNCATED[6, 0] = True
TRUNCATED[[3, 7], 1] = True
TERMINATED[7, 1] = True
REWARD = (10.0 ** (np.arange(STEPS) % 5))[:, None] * np.array([1.0, 2.0])


def stream_step(t: int) -> Transition:
    envs = np.arange(NUM_ENVS)
    return Transition(
        obs=jnp.asarray(np.stack([np.full(NUM_ENVS, t), envs], -1), jnp.uint8),
        action=jnp.asarray(envs + 10 * t, jnp.int32),
        reward=jnp.asarray(REWARD[t], jnp.float32),
        terminated=jnp.asarray(TERMINATED[t]),
        truncated=jnp.asarray(TRUNCATED[t]),
        next_obs=jnp.asarray(np.stack([np.full(NUM_ENVS, t + 1), envs], -1), jnp.uint8),
    )


# Jitted once here: eager dispatch of the many small ops is slower than compiling.
add = jax.jit(replay.add)
sample = jax.jit(replay.sample, static_argnames=("batch_size", "prioritized"))
sample_n_step = jax.jit(replay.sample_n_step, static_argnames=("batch_size", "n", "prioritized"))
sample_sequences = jax.jit(replay.sample_sequences, static_argnames=("batch_size", "length"))


def filled_buffer(capacity: int, steps: int = STEPS) -> replay.ReplayState:
    state = replay.init(example(), capacity, NUM_ENVS)
    for t in range(steps):
        state = add(state, stream_step(t))
    return state


def stream_time(row, capacity: int, steps: int) -> np.ndarray:
    """The stream step stored at each row: the newest t < steps with t = row (mod capacity)."""
    row = np.asarray(row)
    newest = steps - 1
    return newest - (newest - row) % capacity


def n_step_table(lo: int, hi: int, n: int, gamma: float) -> dict:
    """(t, env) -> (return, discount, last t) by a plain loop over the stored steps lo..hi."""
    table = {}
    for env in range(NUM_ENVS):
        for t in range(lo, hi + 1):
            total, m = 0.0, 0
            for k in range(n):
                s = t + k
                if s > hi:
                    break
                total += gamma**k * REWARD[s, env]
                m += 1
                if TERMINATED[s, env] or TRUNCATED[s, env]:
                    break
            last = t + m - 1
            table[t, env] = (total, gamma**m * (1.0 - TERMINATED[last, env]), last)
    return table


@pytest.mark.parametrize("capacity", [16, 8, 5], ids=["unwrapped", "wrapped", "wrapped-twice"])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_returns_discounts_and_last_match_a_loop_for_every_start(capacity, n):
    state = filled_buffer(capacity)
    lo, hi = max(0, STEPS - capacity), STEPS - 1
    table = n_step_table(lo, hi, n, GAMMA)
    out = sample_n_step(state, jax.random.key(n), batch_size=512, n=n, gamma=GAMMA)
    t = stream_time(out.indices.rows, capacity, STEPS)
    envs = np.asarray(out.indices.envs)
    assert set(zip(t.tolist(), envs.tolist())) == set(table)  # every filled slot, nothing else
    expected = np.array([table[key] for key in zip(t.tolist(), envs.tolist())])
    np.testing.assert_array_equal(np.asarray(out.returns), expected[:, 0].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(out.discount), expected[:, 1].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(out.last.obs[:, 0]), expected[:, 2])
    np.testing.assert_array_equal(np.asarray(out.last.obs[:, 1]), envs)
    np.testing.assert_array_equal(np.asarray(out.first.obs[:, 0]), t)
    np.testing.assert_array_equal(np.asarray(out.first.action), 10 * t + envs)
    np.testing.assert_array_equal(np.asarray(out.weights), 1.0)


def test_n_step_targets_equal_rlzoo_returns_n_step_returns_after_wraparound():
    capacity, n = 7, 4
    state = filled_buffer(capacity)
    lo = STEPS - capacity
    next_values = np.random.default_rng(0).normal(size=(STEPS, NUM_ENVS)).astype(np.float32)
    reference = returns.n_step_returns(REWARD[lo:], next_values[lo:], TERMINATED[lo:], TRUNCATED[lo:], GAMMA, n)
    out = sample_n_step(state, jax.random.key(0), batch_size=256, n=n, gamma=jnp.float32(GAMMA))
    t = stream_time(out.indices.rows, capacity, STEPS)
    envs = np.asarray(out.indices.envs)
    last_t = np.asarray(out.last.obs[:, 0]).astype(int)
    target = np.asarray(out.returns) + np.asarray(out.discount) * next_values[last_t, envs]
    np.testing.assert_allclose(target, np.asarray(reference)[t - lo, envs], rtol=1e-6, atol=1e-6)


def test_sampling_never_returns_an_unfilled_slot():
    state = filled_buffer(capacity=10, steps=3)
    key = jax.random.key(1)
    for prioritized in (False, True):
        out = sample(state, key, batch_size=10_000, prioritized=prioritized)
        assert int(np.max(out.indices.rows)) < 3
        assert np.all(np.asarray(out.transitions.obs[:, 0]) < 3)
    out = sample_n_step(state, key, batch_size=10_000, n=5, gamma=GAMMA)
    assert int(np.max(out.indices.rows)) < 3 and int(np.max(out.last.obs[:, 0])) < 3


def test_sequences_stay_in_write_order_and_mask_steps_after_an_episode_end():
    capacity, length = 8, 3
    state = filled_buffer(capacity)
    out = sample_sequences(state, jax.random.key(2), batch_size=2_000, length=length)
    t = np.asarray(out.transitions.obs[..., 0]).astype(int)  # [B, L] stream steps
    envs = np.asarray(out.transitions.obs[..., 1]).astype(int)
    lo, hi = STEPS - capacity, STEPS - 1
    assert out.transitions.obs.dtype == jnp.uint8 and out.mask.shape == (2_000, length)
    np.testing.assert_array_equal(t, t[:, :1] + np.arange(length))  # consecutive, no wrap across position
    assert t.min() == lo and t.max() == hi  # all starts lo..hi-length+1 reached, none beyond
    np.testing.assert_array_equal(envs, np.broadcast_to(np.asarray(out.indices.envs)[:, None], envs.shape))
    done = TERMINATED | TRUNCATED
    expected_mask = np.array([[not done[row[0]:row[0] + k, env].any() for k in range(length)]
                              for row, env in zip(t, envs[:, 0])])
    np.testing.assert_array_equal(np.asarray(out.mask), expected_mask)
    assert not expected_mask.all()  # some sequence did cross an episode end


def test_can_sample_counts_filled_slots_and_sequence_starts():
    state = filled_buffer(capacity=10, steps=3)
    assert bool(replay.can_sample(state, 6)) and not bool(replay.can_sample(state, 7))
    assert bool(replay.can_sample(state, 2, length=3)) and not bool(replay.can_sample(state, 1, length=4))


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(np.sum((counts - expected) ** 2 / expected))


def test_uniform_sample_frequencies_are_uniform_over_filled_slots():
    capacity = 5
    state = filled_buffer(capacity)  # full, wrapped: 10 slots
    out = sample(state, jax.random.key(3), batch_size=20_000)
    counts = np.bincount(np.asarray(out.indices.rows) * NUM_ENVS + np.asarray(out.indices.envs), minlength=10)
    assert chi_square(counts, np.full(10, 0.1)) < 30.0  # df = 9: p ~ 1e-3
    np.testing.assert_array_equal(np.asarray(out.weights), 1.0)


def test_prioritised_frequencies_follow_priority_to_the_alpha_and_weights_follow_eq_2():
    capacity, alpha, beta = 5, 0.6, 0.4
    state = filled_buffer(capacity)
    rows, envs = np.divmod(np.arange(capacity * NUM_ENVS), NUM_ENVS)
    priorities = np.arange(1.0, 11.0, dtype=np.float32)
    state = replay.update_priorities(state, replay.SlotIndex(jnp.asarray(rows), jnp.asarray(envs)), priorities)
    assert float(state.max_priority) == 10.0
    out = sample(state, jax.random.key(4), batch_size=20_000, prioritized=True, alpha=alpha, beta=beta)
    flat = np.asarray(out.indices.rows) * NUM_ENVS + np.asarray(out.indices.envs)
    probs = priorities.astype(np.float64) ** alpha / np.sum(priorities.astype(np.float64) ** alpha)
    assert chi_square(np.bincount(flat, minlength=10), probs) < 30.0
    weights = (10 * probs[flat]) ** -beta
    np.testing.assert_allclose(np.asarray(out.weights), weights / weights.max(), rtol=1e-5)


def test_new_transitions_get_the_max_priority_and_unfilled_slots_none():
    state = filled_buffer(capacity=4, steps=2)
    np.testing.assert_array_equal(np.asarray(state.priorities), [[1, 1], [1, 1], [0, 0], [0, 0]])
    state = replay.update_priorities(state, replay.SlotIndex(jnp.array([0]), jnp.array([1])), jnp.array([7.0]))
    state = add(state, stream_step(2))
    np.testing.assert_array_equal(np.asarray(state.priorities)[:3], [[1, 7], [1, 1], [7, 7]])


def test_a_million_minatar_transitions_fit_in_their_raw_size_and_obs_stay_uint8():
    num_envs, total = 100, 1_000_000
    obs = jax.ShapeDtypeStruct((10, 10, 4), jnp.uint8)
    minatar = Transition(obs, jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32),
                         jax.ShapeDtypeStruct((), bool), jax.ShapeDtypeStruct((), bool), obs)
    abstract = jax.eval_shape(lambda: replay.init(minatar, total // num_envs, num_envs))
    nbytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract))
    raw = total * sum(np.prod(f.shape, dtype=int) * f.dtype.itemsize for f in minatar)
    assert raw == 810 * total
    assert abs(nbytes - raw) <= 0.1 * raw
    assert replay.nbytes(abstract) <= nbytes
    assert abstract.data.obs.dtype == jnp.uint8 and abstract.data.next_obs.dtype == jnp.uint8
    assert abstract.data.obs.shape == (total // num_envs, num_envs, 10, 10, 4)


def test_add_and_sample_work_under_jit_and_vmap_over_seeds():
    num_seeds, capacity = 3, 4
    states = jax.vmap(lambda _: replay.init(example(), capacity, NUM_ENVS))(jnp.arange(num_seeds))
    vadd = jax.jit(jax.vmap(replay.add))
    for t in range(6):
        step = jax.tree.map(lambda x: jnp.stack([x] * num_seeds), stream_step(t))
        step = step._replace(reward=step.reward * jnp.arange(1.0, num_seeds + 1)[:, None])
        states = vadd(states, step)
    np.testing.assert_array_equal(np.asarray(states.size), capacity)
    np.testing.assert_array_equal(np.asarray(states.position), 6 % capacity)
    keys = jax.random.split(jax.random.key(5), num_seeds)
    vsample = jax.jit(jax.vmap(lambda s, k: replay.sample(s, k, 8, prioritized=True)))
    out = vsample(states, keys)
    assert out.transitions.obs.shape == (num_seeds, 8, 2) and out.weights.shape == (num_seeds, 8)
    gammas = jnp.array([0.5, 0.9, 0.99])
    vn_step = jax.jit(jax.vmap(lambda s, k, g: replay.sample_n_step(s, k, 8, 3, g)))
    batched = vn_step(states, keys, gammas)
    for seed in range(num_seeds):
        state = jax.tree.map(lambda x: x[seed], states)
        single = sample_n_step(state, keys[seed], batch_size=8, n=3, gamma=gammas[seed])
        np.testing.assert_allclose(np.asarray(batched.returns[seed]), np.asarray(single.returns), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(batched.indices.rows[seed]), np.asarray(single.indices.rows))


def test_add_rejects_transitions_of_the_wrong_shape():
    state = replay.init(example(), 4, NUM_ENVS)
    wrong = jax.tree.map(lambda x: x[:1], stream_step(0))
    with pytest.raises(AssertionError, match="obs"):
        replay.add(state, wrong)


def test_bad_sizes_raise_config_errors_naming_the_field():
    state = filled_buffer(capacity=4, steps=2)
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="capacity=0"):
        replay.init(example(), 0, NUM_ENVS)
    with pytest.raises(ConfigError, match="num_envs=0"):
        replay.init(example(), 4, 0)
    with pytest.raises(ConfigError, match="n=0"):
        replay.sample_n_step(state, key, 4, 0, GAMMA)
    with pytest.raises(ConfigError, match="length=0"):
        replay.sample_sequences(state, key, 4, 0)
    with pytest.raises(ConfigError, match="batch_size=0"):
        replay.check_can_sample(0, 100, 4, 1_000)


def test_a_batch_larger_than_the_filled_buffer_at_learning_start_is_a_config_error():
    # 1000 env steps over 4 envs fill 250 rows = 1000 transitions.
    replay.check_can_sample(1000, 500, 4, 1_000)
    with pytest.raises(ConfigError, match="batch_size=1001.*when learning starts"):
        replay.check_can_sample(1001, 500, 4, 1_000)
    # The capacity caps the filled buffer: 10 rows x 4 envs.
    with pytest.raises(ConfigError, match="batch_size=64.*40 transitions"):
        replay.check_can_sample(64, 10, 4, 10_000)
