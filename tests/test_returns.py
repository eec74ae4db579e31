"""Tests for rlzoo.returns against plain-Python loop definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import returns

RTOL = 1e-5
ATOL = 1e-5
SEEDS = (0, 1, 2, 3)
BATCH = 3


# ---------------------------------------------------------------------------
# Random rollouts with episode boundaries inside them.
# ---------------------------------------------------------------------------


def make_rollout(seed: int, T: int | None = None, batch: int = BATCH) -> dict:
    """A random time-major rollout [T, batch] with both kinds of episode end.

    Every rollout has at least one termination and one truncation inside it;
    seeds alternate between the last step being terminated, truncated or
    neither, so all three rollout-end cases are covered.
    """
    rng = np.random.default_rng(seed)
    if T is None:
        T = int(rng.integers(20, 51))
    shape = (T, batch)
    terminated = rng.random(shape) < 0.1
    truncated = rng.random(shape) < 0.1
    terminated[T // 3, 0] = True
    truncated[T // 2, 1] = True
    # Both flags at once: termination wins (no bootstrap).
    terminated[2 * T // 3, 2] = True
    truncated[2 * T // 3, 2] = True
    case = seed % 3
    terminated[-1, :] = case == 0
    truncated[-1, :] = case == 1
    return dict(
        rewards=rng.normal(size=shape).astype(np.float32),
        values=rng.normal(size=shape).astype(np.float32),
        next_values=rng.normal(size=shape).astype(np.float32),
        terminated=terminated,
        truncated=truncated,
    )


def consistent_next_values(values, next_values, terminated, truncated):
    """next_values[t] := values[t+1] on non-done t < T-1, as in a real rollout."""
    done = terminated | truncated
    out = next_values.copy()
    out[:-1] = np.where(done[:-1], next_values[:-1], values[1:])
    return out


# ---------------------------------------------------------------------------
# Reference implementations: plain loops written from the definitions.
# ---------------------------------------------------------------------------


def ref_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    T, B = rewards.shape
    adv = np.zeros((T, B), np.float64)
    for b in range(B):
        next_adv = 0.0
        for t in reversed(range(T)):
            term = float(terminated[t, b])
            done = float(terminated[t, b] or truncated[t, b])
            delta = rewards[t, b] + gamma * (1 - term) * next_values[t, b] - values[t, b]
            next_adv = delta + gamma * lam * (1 - done) * next_adv
            adv[t, b] = next_adv
    return adv, adv + values


def ref_lambda_returns(rewards, next_values, terminated, truncated, gamma, lam):
    T, B = rewards.shape
    out = np.zeros((T, B), np.float64)
    for b in range(B):
        for t in reversed(range(T)):
            term = float(terminated[t, b])
            if t == T - 1:
                c = 0.0
            else:
                c = 0.0 if (terminated[t, b] or truncated[t, b]) else 1.0
            g_next = out[t + 1, b] if t < T - 1 else 0.0
            out[t, b] = rewards[t, b] + gamma * (1 - term) * (
                (1 - lam * c) * next_values[t, b] + lam * c * g_next
            )
    return out


def ref_n_step_returns(rewards, next_values, terminated, truncated, gamma, n):
    T, B = rewards.shape
    out = np.zeros((T, B), np.float64)
    for b in range(B):
        for t in range(T):
            g = 0.0
            for k in range(n):
                s = t + k
                g += gamma**k * rewards[s, b]
                episode_ends = bool(terminated[s, b] or truncated[s, b])
                if episode_ends or k == n - 1 or s == T - 1:
                    g += gamma ** (k + 1) * (1 - float(terminated[s, b])) * next_values[s, b]
                    break
            out[t, b] = g
    return out


def ref_discounted_returns(rewards, terminated, truncated, gamma, next_values=None):
    T, B = rewards.shape
    out = np.zeros((T, B), np.float64)
    for b in range(B):
        for t in range(T):
            g = 0.0
            for s in range(t, T):
                g += gamma ** (s - t) * rewards[s, b]
                episode_ends = bool(terminated[s, b] or truncated[s, b])
                if episode_ends or s == T - 1:
                    if next_values is not None and not terminated[s, b]:
                        g += gamma ** (s - t + 1) * next_values[s, b]
                    break
            out[t, b] = g
    return out


def assert_close(actual, desired):
    np.testing.assert_allclose(np.asarray(actual), desired, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# The rollouts used really contain what the tests claim.
# ---------------------------------------------------------------------------


def test_rollouts_contain_terminations_truncations_and_each_last_step_case():
    last_cases = set()
    for seed in SEEDS:
        r = make_rollout(seed)
        assert 20 <= r["rewards"].shape[0] <= 50
        assert r["terminated"][:-1].any() and r["truncated"][:-1].any()
        last_cases.add((bool(r["terminated"][-1, 0]), bool(r["truncated"][-1, 0])))
    assert last_cases == {(True, False), (False, True), (False, False)}


# ---------------------------------------------------------------------------
# Each function equals its loop definition.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_equals_loop_definition_with_truncation_and_termination(seed):
    r = make_rollout(seed)
    args = (r["rewards"], r["values"], r["next_values"], r["terminated"], r["truncated"])
    adv, targets = returns.gae(*args, 0.97, 0.9)
    ref_adv, ref_targets = ref_gae(*args, 0.97, 0.9)
    assert adv.shape == targets.shape == r["rewards"].shape
    assert_close(adv, ref_adv)
    assert_close(targets, ref_targets)


@pytest.mark.parametrize("seed", SEEDS)
def test_lambda_returns_equal_loop_definition_with_truncation_and_termination(seed):
    r = make_rollout(seed)
    args = (r["rewards"], r["next_values"], r["terminated"], r["truncated"])
    assert_close(returns.lambda_returns(*args, 0.97, 0.8), ref_lambda_returns(*args, 0.97, 0.8))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_n_step_returns_equal_loop_definition_with_truncation_and_termination(seed, n):
    r = make_rollout(seed)
    args = (r["rewards"], r["next_values"], r["terminated"], r["truncated"])
    assert_close(returns.n_step_returns(*args, 0.95, n), ref_n_step_returns(*args, 0.95, n))


@pytest.mark.parametrize("seed", SEEDS)
def test_discounted_returns_with_bootstrap_equal_loop_definition(seed):
    r = make_rollout(seed)
    flags = (r["terminated"], r["truncated"])
    actual = returns.discounted_returns(r["rewards"], *flags, 0.95, next_values=r["next_values"])
    desired = ref_discounted_returns(r["rewards"], *flags, 0.95, next_values=r["next_values"])
    assert_close(actual, desired)


@pytest.mark.parametrize("seed", SEEDS)
def test_discounted_returns_without_next_values_never_bootstrap(seed):
    r = make_rollout(seed)
    flags = (r["terminated"], r["truncated"])
    actual = returns.discounted_returns(r["rewards"], *flags, 0.95)
    assert_close(actual, ref_discounted_returns(r["rewards"], *flags, 0.95))


def test_float_flags_give_the_same_result_as_bool_flags():
    r = make_rollout(0)
    term_f = r["terminated"].astype(np.float32)
    trunc_f = r["truncated"].astype(np.float32)
    rw, v, nv = r["rewards"], r["values"], r["next_values"]
    for fn in [
        lambda te, tr: returns.gae(rw, v, nv, te, tr, 0.9, 0.8)[0],
        lambda te, tr: returns.lambda_returns(rw, nv, te, tr, 0.9, 0.8),
        lambda te, tr: returns.n_step_returns(rw, nv, te, tr, 0.9, 4),
        lambda te, tr: returns.discounted_returns(rw, te, tr, 0.9, nv),
    ]:
        assert_close(fn(term_f, trunc_f), np.asarray(fn(r["terminated"], r["truncated"])))


# ---------------------------------------------------------------------------
# Relations between the functions.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_lambda_returns_at_lambda_zero_equal_one_step_td_target(seed):
    r = make_rollout(seed)
    gamma = 0.9
    td = r["rewards"] + gamma * (1 - r["terminated"]) * r["next_values"]
    actual = returns.lambda_returns(
        r["rewards"], r["next_values"], r["terminated"], r["truncated"], gamma, 0.0
    )
    assert_close(actual, td)


@pytest.mark.parametrize("seed", SEEDS)
def test_lambda_returns_at_lambda_one_equal_discounted_returns_with_bootstrap(seed):
    r = make_rollout(seed)
    flags = (r["terminated"], r["truncated"])
    lam_one = returns.lambda_returns(r["rewards"], r["next_values"], *flags, 0.93, 1.0)
    mc = returns.discounted_returns(r["rewards"], *flags, 0.93, next_values=r["next_values"])
    assert_close(lam_one, np.asarray(mc))


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_value_targets_equal_lambda_returns_when_next_values_are_consistent(seed):
    r = make_rollout(seed)
    flags = (r["terminated"], r["truncated"])
    next_values = consistent_next_values(r["values"], r["next_values"], *flags)
    _, targets = returns.gae(r["rewards"], r["values"], next_values, *flags, 0.97, 0.9)
    lam_ret = returns.lambda_returns(r["rewards"], next_values, *flags, 0.97, 0.9)
    assert_close(targets, np.asarray(lam_ret))


@pytest.mark.parametrize("seed", SEEDS)
def test_n_step_with_n_one_equals_td_zero_target(seed):
    r = make_rollout(seed)
    gamma = 0.9
    td = r["rewards"] + gamma * (1 - r["terminated"]) * r["next_values"]
    actual = returns.n_step_returns(
        r["rewards"], r["next_values"], r["terminated"], r["truncated"], gamma, 1
    )
    assert_close(actual, td)


@pytest.mark.parametrize("seed", SEEDS)
def test_n_step_with_n_at_least_rollout_length_equals_discounted_returns_with_bootstrap(seed):
    r = make_rollout(seed)
    T = r["rewards"].shape[0]
    flags = (r["terminated"], r["truncated"])
    mc = returns.discounted_returns(r["rewards"], *flags, 0.95, next_values=r["next_values"])
    for n in (T, T + 7):
        n_step = returns.n_step_returns(r["rewards"], r["next_values"], *flags, 0.95, n)
        assert_close(n_step, np.asarray(mc))


def test_n_step_never_mixes_rewards_across_an_episode_boundary():
    # One env, T = 6: terminated at t=1, truncated at t=3, rollout ends at t=5.
    # Rewards are powers of ten so any leaked reward shows up in the digits.
    rewards = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0], np.float32)
    next_values = np.array([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0], np.float32)
    terminated = np.array([0, 1, 0, 0, 0, 0], bool)
    truncated = np.array([0, 0, 0, 1, 0, 0], bool)
    gamma, n = 0.5, 3
    expected = np.array(
        [
            1.0 + 0.5 * 10.0,  # t=0: episode terminates at t=1, no bootstrap.
            10.0,  # t=1: terminal step itself.
            100.0 + 0.5 * 1000.0 + 0.25 * -4.0,  # t=2: truncated at t=3, bootstrap V(s'_3).
            1000.0 + 0.5 * -4.0,  # t=3: truncated step itself.
            10000.0 + 0.5 * 100000.0 + 0.25 * -6.0,  # t=4: rollout ends at t=5.
            100000.0 + 0.5 * -6.0,  # t=5: last step.
        ]
    )
    actual = returns.n_step_returns(rewards, next_values, terminated, truncated, gamma, n)
    assert_close(actual, expected)


def test_n_step_truncates_sum_at_n_and_bootstraps_mid_episode():
    rewards = np.ones(5, np.float32)
    next_values = np.full(5, 10.0, np.float32)
    no_end = np.zeros(5, bool)
    actual = returns.n_step_returns(rewards, next_values, no_end, no_end, 0.5, 2)
    # t=0..2: 1 + 0.5 + 0.25*10; t=3: same (ends at t=4 = rollout end); t=4: 1 + 0.5*10.
    expected = np.array([4.0, 4.0, 4.0, 4.0, 6.0])
    assert_close(actual, expected)


@pytest.mark.parametrize("n", [0, -1])
def test_n_step_with_n_below_one_raises_value_error_naming_n(n):
    r = make_rollout(0)
    with pytest.raises(ValueError, match=r"\bn\b"):
        returns.n_step_returns(
            r["rewards"], r["next_values"], r["terminated"], r["truncated"], 0.9, n
        )


# ---------------------------------------------------------------------------
# Transformations: jit and vmap over gamma (and lam).
# ---------------------------------------------------------------------------


def test_jitted_and_vmapped_over_gamma_equals_separate_calls():
    r = make_rollout(1)
    rw, v, nv = r["rewards"], r["values"], r["next_values"]
    te, tr = r["terminated"], r["truncated"]
    gammas = jnp.array([0.0, 0.5, 0.9, 0.99], jnp.float32)
    lam = 0.9

    batched = {
        "gae": jax.jit(jax.vmap(lambda g: returns.gae(rw, v, nv, te, tr, g, lam)))(gammas),
        "lambda": jax.jit(jax.vmap(lambda g: returns.lambda_returns(rw, nv, te, tr, g, lam)))(gammas),
        "n_step": jax.jit(jax.vmap(lambda g: returns.n_step_returns(rw, nv, te, tr, g, 4)))(gammas),
        "mc": jax.jit(jax.vmap(lambda g: returns.discounted_returns(rw, te, tr, g, nv)))(gammas),
        "mc_no_bootstrap": jax.jit(jax.vmap(lambda g: returns.discounted_returns(rw, te, tr, g)))(gammas),
    }
    for i, g in enumerate([0.0, 0.5, 0.9, 0.99]):
        adv, targets = returns.gae(rw, v, nv, te, tr, g, lam)
        assert_close(batched["gae"][0][i], np.asarray(adv))
        assert_close(batched["gae"][1][i], np.asarray(targets))
        assert_close(batched["lambda"][i], np.asarray(returns.lambda_returns(rw, nv, te, tr, g, lam)))
        assert_close(batched["n_step"][i], np.asarray(returns.n_step_returns(rw, nv, te, tr, g, 4)))
        assert_close(batched["mc"][i], np.asarray(returns.discounted_returns(rw, te, tr, g, nv)))
        assert_close(batched["mc_no_bootstrap"][i], np.asarray(returns.discounted_returns(rw, te, tr, g)))


def test_vmapped_over_lambda_equals_separate_calls():
    r = make_rollout(2)
    args = (r["rewards"], r["next_values"], r["terminated"], r["truncated"])
    lams = jnp.array([0.0, 0.5, 0.95, 1.0], jnp.float32)
    batched = jax.jit(jax.vmap(lambda l: returns.lambda_returns(*args, 0.9, l)))(lams)
    for i, lam in enumerate([0.0, 0.5, 0.95, 1.0]):
        assert_close(batched[i], ref_lambda_returns(*args, 0.9, lam))


def test_functions_accept_any_trailing_batch_dims():
    r = make_rollout(0, T=24, batch=6)
    reshape = lambda x: x.reshape(24, 2, 3)
    flat = returns.lambda_returns(r["rewards"], r["next_values"], r["terminated"], r["truncated"], 0.9, 0.7)
    nested = returns.lambda_returns(
        *(reshape(r[k]) for k in ("rewards", "next_values", "terminated", "truncated")), 0.9, 0.7
    )
    assert nested.shape == (24, 2, 3)
    assert_close(nested.reshape(24, 6), np.asarray(flat))
    single = returns.gae(*(r[k][:, 0] for k in ("rewards", "values", "next_values", "terminated", "truncated")), 0.9, 0.7)
    assert single[0].shape == (24,)


def test_mismatched_shapes_are_rejected():
    r = make_rollout(0)
    with pytest.raises(AssertionError):
        returns.gae(r["rewards"], r["values"][:-1], r["next_values"], r["terminated"], r["truncated"], 0.9, 0.9)
    with pytest.raises(AssertionError):
        returns.discounted_returns(r["rewards"], r["terminated"], r["truncated"][:, :2], 0.9)
