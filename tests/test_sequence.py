"""Facts about the sequence models: the resettable scan, parallel (associative) or sequential, is
the step-by-step recurrence with resets (values and gradients), and acting one step at a time
equals the pass over the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.trainer import ConfigError
from rlzoo.sequence import (SEQUENCE_MODELS, hippo_legs_normal, make_sequence_model, resettable_scan,
                            resolve_scan, zoh_discretize)

T, B, P, F = 64, 3, 8, 5


def loop_recurrence(a, b, reset, initial):
    """x_t = A_t x_{t-1} (1 - c_t) + b_t, one step after another."""
    def step(x, inputs):
        a_t, b_t, c_t = inputs
        x = a_t * x * (1 - c_t[:, None]) + b_t
        return x, x

    return jax.lax.scan(step, initial, (a, b, reset))[1]


@jax.jit
def random_problem(seed):
    k = jax.random.split(jax.random.key(seed), 6)
    lam = jax.random.uniform(k[0], (T, B, P), minval=0.5, maxval=0.999) * jnp.exp(
        1j * jax.random.uniform(k[1], (T, B, P), maxval=np.pi))
    bu = jax.random.normal(k[2], (T, B, P)) + 1j * jax.random.normal(k[3], (T, B, P))
    reset = jax.random.bernoulli(k[4], 0.15, (T, B)).astype(jnp.float32)
    initial = jax.random.normal(k[5], (B, P)).astype(jnp.complex64)
    return lam.astype(jnp.complex64), bu.astype(jnp.complex64), reset, initial


@pytest.mark.parametrize("method", ["associative", "sequential"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resettable_scan_equals_the_loop_with_resets_at_random_positions(seed, method):
    a, b, reset, initial = random_problem(seed)
    assert 0 < reset.sum() < reset.size  # resets happen, at random places
    scan = jax.jit(resettable_scan, static_argnames="method")
    parallel, loop = scan(a, b, reset, initial, method=method), jax.jit(loop_recurrence)(a, b, reset, initial)
    np.testing.assert_allclose(parallel, loop, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["associative", "sequential"])
def test_a_time_invariant_transition_equals_its_broadcast_over_time(method):
    """S5's Λ̄ is the same at every step: passing it as [P] gives the states of the [T, B, P] broadcast."""
    a, b, reset, initial = random_problem(5)
    scan = jax.jit(resettable_scan, static_argnames="method")
    np.testing.assert_allclose(scan(a[0, 0], b, reset, initial, method=method),
                               jax.jit(loop_recurrence)(jnp.broadcast_to(a[0, 0], a.shape), b, reset, initial),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["associative", "sequential"])
def test_resettable_scan_gradient_equals_the_loop_gradient(method):
    a, b, reset, initial = random_problem(3)
    weights = jax.random.normal(jax.random.PRNGKey(9), (T, B, P))

    def loss(recurrence, a, b, initial):
        return jnp.sum(weights * jnp.abs(recurrence(a, b, reset, initial)) ** 2) / T

    scan = lambda *x: resettable_scan(*x, method=method)  # noqa: E731
    grads_scan = jax.jit(jax.grad(lambda *x: loss(scan, *x), argnums=(0, 1, 2)))(a, b, initial)
    grads_loop = jax.jit(jax.grad(lambda *x: loss(loop_recurrence, *x), argnums=(0, 1, 2)))(a, b, initial)
    for g_scan, g_loop in zip(grads_scan, grads_loop):
        assert float(jnp.abs(g_loop).max()) > 1e-3  # a gradient that can be wrong
        np.testing.assert_allclose(g_scan, g_loop, atol=1e-5, rtol=1e-5)


def test_a_reset_forgets_everything_before_it():
    a, b, reset, initial = random_problem(4)
    reset = reset.at[10].set(1.0)
    changed = b.at[:10].add(100.0)
    scan = jax.jit(resettable_scan)
    np.testing.assert_allclose(scan(a, changed, reset, initial)[10:], scan(a, b, reset, initial)[10:], atol=1e-4)


def test_hippo_n_eigenvalues_have_real_part_minus_half_and_come_in_conjugate_pairs():
    lam, vectors = hippo_legs_normal(16)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-6)
    np.testing.assert_allclose(np.sort(lam.imag), np.sort(-lam.imag), atol=1e-6)
    np.testing.assert_allclose(vectors.conj().T @ vectors, np.eye(16), atol=1e-6)


def test_zoh_matches_the_exact_solution_for_a_constant_input():
    """x(Δ) = e^{λΔ} x(0) + (e^{λΔ} - 1)/λ · B u for constant u: check against Euler with tiny steps."""
    lam, b, step = jnp.asarray([-0.5 + 2j]), jnp.asarray([[1.0 + 0j]]), 0.05
    lam_bar, b_bar = zoh_discretize(lam, b, step)
    dt = step / 20_000
    x = jax.lax.fori_loop(0, 20_000, lambda _, x: x + dt * (lam[0] * x + b[0, 0]), jnp.complex64(0.3))
    np.testing.assert_allclose(lam_bar[0] * 0.3 + b_bar[0, 0], x, atol=1e-5)


def _models():
    return [("s5", make_sequence_model("s5", 16, state_size=8, num_layers=2)),
            ("s5-associative", make_sequence_model("s5", 16, state_size=8, num_layers=2, scan="associative")),
            ("gru", make_sequence_model("gru", 16)), ("lstm", make_sequence_model("lstm", 16)),
            ("none", make_sequence_model("none", 16))]


@pytest.mark.parametrize("kind, model", _models(), ids=[k for k, _ in _models()])
def test_acting_step_by_step_equals_the_parallel_pass_over_the_same_sequence(kind, model):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (T, B, F))
    reset = jax.random.bernoulli(jax.random.PRNGKey(1), 0.1, (T, B))
    params = jax.jit(model.init)(key, model.initialize_carry(B), (x, reset))
    parallel = jax.jit(model.apply)
    # A nonzero carried-in state: the sequence continues from an earlier rollout.
    carry = parallel(params, model.initialize_carry(B), (x[:7], reset[:7]))[0]
    final_seq, y_seq = parallel(params, carry, (x, reset))
    final_step, y_step = jax.jit(lambda c, xs: jax.lax.scan(lambda c, inp: model.apply(params, c, inp), c, xs))(
        carry, (x, reset))
    assert y_seq.shape == (T, B, 16)
    np.testing.assert_allclose(y_seq, y_step, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(final_seq), jax.tree.leaves(final_step)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    if kind != "none":  # the memory matters: another carried-in state changes the outputs before a reset
        other = parallel(params, model.initialize_carry(B), (x, reset))[1]
        assert float(jnp.abs(other[0] - y_seq[0]).max()) > 1e-4


def test_the_two_s5_scans_give_the_same_outputs_and_parameter_gradients():
    """scan="auto" (sequential on this CPU) and "associative" are one model: same params, same numbers."""
    assert resolve_scan("auto") == ("sequential" if jax.default_backend() == "cpu" else "associative")
    x = jax.random.normal(jax.random.PRNGKey(0), (T, B, F))
    reset = jax.random.bernoulli(jax.random.PRNGKey(1), 0.1, (T, B))
    models = {scan: make_sequence_model("s5", 16, state_size=8, num_layers=2, scan=scan)
              for scan in ("associative", "sequential")}
    params = models["sequential"].init(jax.random.PRNGKey(2), models["sequential"].initialize_carry(B), (x, reset))
    carry = jax.tree.map(lambda h: h + 0.3 - 0.2j, models["sequential"].initialize_carry(B))  # a carried-in state

    def loss(model, params):
        final, y = model.apply(params, carry, (x, reset))
        return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.abs(h) ** 2) for h in final), y

    results = {scan: jax.jit(jax.grad(lambda p, m=m: loss(m, p), has_aux=True))(params)
               for scan, m in models.items()}
    np.testing.assert_allclose(results["associative"][1], results["sequential"][1], atol=1e-5, rtol=1e-5)
    for g_assoc, g_seq in zip(jax.tree.leaves(results["associative"][0]), jax.tree.leaves(results["sequential"][0])):
        np.testing.assert_allclose(g_assoc, g_seq, atol=1e-4, rtol=1e-4)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(results["sequential"][0])) > 1e-2


def test_all_models_share_one_interface():
    assert set(SEQUENCE_MODELS) == {"s5", "gru", "lstm", "none"}
    for _, model in _models():
        carry = model.initialize_carry(4)
        params = model.init(jax.random.PRNGKey(0), carry, (jnp.zeros((4, F)), jnp.zeros((4,), bool)))
        new_carry, y = model.apply(params, carry, (jnp.ones((4, F)), jnp.zeros((4,), bool)))
        assert y.shape == (4, 16)
        assert jax.tree.structure(new_carry) == jax.tree.structure(carry)


@pytest.mark.parametrize("kind, options, message", [
    ("transformer", {}, "sequence_model='transformer' is not allowed: one of s5, gru, lstm, none"),
    ("s5", {"state_size": 0}, "state_size=0 is not allowed"),
    ("s5", {"state_size": 7}, "state_size=7 is not allowed"),
    ("s5", {"scan": "parallel"}, "scan='parallel' is not allowed: one of auto, associative, sequential"),
    ("gru", {"features": 0}, "features=0 is not allowed"),
])
def test_bad_sequence_model_settings_are_clear_errors(kind, options, message):
    with pytest.raises(ConfigError, match=message):
        make_sequence_model(kind, **{"features": 8, **options})


def test_mismatched_inputs_are_refused():
    model = make_sequence_model("s5", 8, state_size=4)
    with pytest.raises(ValueError, match="one more axis than reset"):
        model.init(jax.random.PRNGKey(0), model.initialize_carry(2), (jnp.zeros((5, 2, 3)), jnp.zeros((5,))))
