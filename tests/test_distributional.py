"""Tests for rlzoo.distributional against plain-loop definitions and invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import distributional as dist
from rlzoo.trainer import ConfigError

ATOL = 1e-5
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------
# Reference implementations, written from the papers.
# ---------------------------------------------------------------------------


def project_loop(values: np.ndarray, probs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Bellemare et al. (2017), Algorithm 1, for one distribution, in float64."""
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (len(support) - 1)
    m = np.zeros(len(support))
    for tz, p in zip(values, probs):
        b = (min(max(tz, v_min), v_max) - v_min) / delta
        lo, hi = math.floor(b), math.ceil(b)
        if lo == hi:  # Lands on an atom: all mass there.
            m[lo] += p
        else:
            m[lo] += p * (hi - b)
            m[hi] += p * (b - lo)
    return m


def hl_gauss_loop(y: float, v_min: float, v_max: float, num_bins: int, sigma_ratio: float) -> np.ndarray:
    """Farebrother et al. (2024), the truncated-Gaussian histogram, in float64."""
    sigma = sigma_ratio * (v_max - v_min) / num_bins
    edges = np.linspace(v_min, v_max, num_bins + 1)
    cdf = np.array([math.erf((e - y) / (math.sqrt(2.0) * sigma)) for e in edges])
    return np.diff(cdf) / (cdf[-1] - cdf[0])


def c51_batch(seed: int, batch: int = 16, num_atoms: int = 51, v_min: float = -10.0, v_max: float = 10.0):
    """Random C51 targets: values r + γ(1 - term) z, some beyond the support, and random probs."""
    rng = np.random.default_rng(seed)
    support = np.asarray(dist.make_support(v_min, v_max, num_atoms))
    r = rng.normal(scale=3.0, size=(batch, 1)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.0, size=(batch, 1)).astype(np.float32)
    term = (rng.random((batch, 1)) < 0.2).astype(np.float32)
    values = r + gamma * (1.0 - term) * support[None, :]
    logits = rng.normal(scale=2.0, size=(batch, num_atoms))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return values.astype(np.float32), probs.astype(np.float32), support


# ---------------------------------------------------------------------------
# Grids and their errors.
# ---------------------------------------------------------------------------


def test_grids():
    np.testing.assert_allclose(dist.make_support(-10.0, 10.0, 51), np.linspace(-10, 10, 51), atol=1e-6)
    np.testing.assert_allclose(dist.bin_edges(0.0, 1.0, 4), [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-7)
    np.testing.assert_allclose(dist.bin_centres(0.0, 1.0, 4), [0.125, 0.375, 0.625, 0.875], atol=1e-7)
    assert dist.make_support(-1, 1, 2).shape == (2,)  # ints are accepted as numbers


@pytest.mark.parametrize("v_min, v_max", [(1.0, 1.0), (2.0, -2.0)])
def test_bad_range_raises(v_min, v_max):
    for make in (dist.make_support, dist.bin_edges, dist.bin_centres):
        with pytest.raises(ConfigError, match="v_min.*v_max"):
            make(v_min, v_max, 51)
    with pytest.raises(ConfigError, match="v_min.*v_max"):
        dist.hl_gauss(jnp.zeros(3), v_min, v_max, 51)


@pytest.mark.parametrize("count", [1, 0, -3, 2.5, True])
def test_bad_count_raises(count):
    with pytest.raises(ConfigError, match="num_atoms"):
        dist.make_support(-1.0, 1.0, count)
    with pytest.raises(ConfigError, match="num_bins"):
        dist.bin_centres(-1.0, 1.0, count)
    with pytest.raises(ConfigError, match="num_bins"):
        dist.hl_gauss(jnp.zeros(3), -1.0, 1.0, count)


def test_bad_bounds_and_sigma_raise():
    with pytest.raises(ConfigError, match="v_max"):
        dist.make_support(0.0, math.inf, 11)
    with pytest.raises(ConfigError, match="v_min"):
        dist.make_support("low", 1.0, 11)
    with pytest.raises(ConfigError, match="sigma_ratio"):
        dist.hl_gauss(jnp.zeros(3), -1.0, 1.0, 11, sigma_ratio=0.0)


# ---------------------------------------------------------------------------
# C51 projection.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_projection_matches_algorithm_1(seed):
    values, probs, support = c51_batch(seed)
    got = np.asarray(dist.categorical_projection(values, probs, support))
    want = np.stack([project_loop(v, p, support.astype(np.float64)) for v, p in zip(values, probs)])
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_projection_keeps_mass_and_clipped_mean(seed):
    values, probs, support = c51_batch(seed)
    m = np.asarray(dist.categorical_projection(values, probs, support), np.float64)
    assert m.shape == probs.shape
    assert (m >= 0.0).all()
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=ATOL)
    clipped_mean = (probs * np.clip(values, support[0], support[-1])).sum(-1)
    np.testing.assert_allclose(m @ support, clipped_mean, atol=1e-4)


def test_projection_onto_a_different_number_of_atoms():
    """The source may have any number of values, e.g. a coarser net projected onto a finer support."""
    rng = np.random.default_rng(7)
    values = rng.uniform(-3.0, 3.0, size=(4, 5)).astype(np.float32)
    probs = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    support = np.asarray(dist.make_support(-2.0, 2.0, 21))
    got = dist.categorical_projection(values, probs, support)
    assert got.shape == (4, 21)
    want = np.stack([project_loop(v, p, support.astype(np.float64)) for v, p in zip(values, probs)])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_projection_identity():
    """γ = 1, r = 0, no termination: the target distribution is projected onto itself.

    Exact in real arithmetic; in float32 rounding of the atoms moves ~1e-6 of mass.
    """
    _, probs, support = c51_batch(3)
    values = 0.0 + 1.0 * (1.0 - 0.0) * np.broadcast_to(support, probs.shape)
    np.testing.assert_allclose(dist.categorical_projection(values, probs, support), probs, atol=ATOL)


def test_projection_of_terminal_is_two_hot_of_reward():
    """On termination every atom collapses onto r: the projection is two_hot(r)."""
    _, probs, support = c51_batch(4)
    r = np.linspace(-12.0, 12.0, probs.shape[0]).astype(np.float32)  # some beyond the support
    values = np.broadcast_to(r[:, None], probs.shape)
    np.testing.assert_allclose(
        dist.categorical_projection(values, probs, support), dist.two_hot(r, support), atol=1e-6
    )


def test_projection_of_point_mass_is_two_hot():
    y = np.array([-11.0, -10.0, -3.3, 0.0, 0.1, 4.75, 9.99, 10.0, 25.0], np.float32)
    support = dist.make_support(-10.0, 10.0, 51)
    one_value = dist.categorical_projection(y[:, None], np.ones((len(y), 1), np.float32), support)
    np.testing.assert_allclose(one_value, dist.two_hot(y, support), atol=1e-6)


# ---------------------------------------------------------------------------
# Two-hot and HL-Gauss.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("points", ["support", "centres"])
def test_two_hot_recovers_and_clips(points):
    grid = dist.make_support(-5.0, 5.0, 41) if points == "support" else dist.bin_centres(-5.0, 5.0, 40)
    low, high = float(grid[0]), float(grid[-1])
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.uniform(low, high, 200), np.asarray(grid), [low, high]]).astype(np.float32)
    p = np.asarray(dist.two_hot(y, grid))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    assert ((p > 0).sum(-1) <= 2).all()
    np.testing.assert_allclose(p @ np.asarray(grid), y, atol=1e-5)
    outside = np.array([low - 0.1, low - 100.0, high + 1e-3, high + 7.0], np.float32)
    p_out = np.asarray(dist.two_hot(outside, grid))
    np.testing.assert_allclose(p_out @ np.asarray(grid), [low, low, high, high], atol=1e-5)
    np.testing.assert_allclose(p_out[:, 0], [1.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("num_bins", [51, 64, 101])
@pytest.mark.parametrize("v_min, v_max", [(-10.0, 10.0), (0.0, 1.0)])
def test_hl_gauss_recovers_interior_mean(v_min, v_max, num_bins):
    """Float32 suffices: the aliasing bias at σ = 0.75 ς is ~5e-6 ς, rounding ~1e-6 here."""
    width = v_max - v_min
    rng = np.random.default_rng(num_bins)
    y = rng.uniform(v_min + 0.2 * width, v_max - 0.2 * width, 500).astype(np.float32)
    p = dist.hl_gauss(y, v_min, v_max, num_bins)
    assert p.dtype == jnp.float32 and p.shape == (500, num_bins)
    assert (np.asarray(p) >= 0.0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p @ dist.bin_centres(v_min, v_max, num_bins), y, atol=1e-4)


@pytest.mark.parametrize("sigma_ratio", [0.25, 0.75, 2.0])
def test_hl_gauss_matches_definition(sigma_ratio):
    y = np.array([-9.9, -3.0, 0.0, 0.17, 6.5, 10.0], np.float32)  # near and at the ends too
    got = dist.hl_gauss(y, -10.0, 10.0, 51, sigma_ratio)
    want = np.stack([hl_gauss_loop(float(v), -10.0, 10.0, 51, sigma_ratio) for v in y])
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_hl_gauss_edges_are_truncated_and_clipped():
    centres = dist.bin_centres(-10.0, 10.0, 51)
    p = dist.hl_gauss(jnp.array([10.0, 1e3, -1e6]), -10.0, 10.0, 51)
    assert np.isfinite(np.asarray(p)).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p[1], p[0], atol=1e-7)  # y beyond v_max counts as v_max
    mean = np.asarray(p @ centres)
    assert mean[0] < 10.0 - 0.1  # truncated at the edge: pulled inwards
    assert mean[2] > -10.0 + 0.1


# ---------------------------------------------------------------------------
# Read-out, loss, gradients, jit and vmap.
# ---------------------------------------------------------------------------


def test_expected_value_and_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 7)).astype(np.float32)
    points = np.linspace(-1.0, 2.0, 7).astype(np.float32)
    target = rng.dirichlet(np.ones(7), size=3).astype(np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(dist.expected_value(logits, points), softmax @ points, atol=1e-6)
    np.testing.assert_allclose(
        dist.cross_entropy(logits, target), -(target * np.log(softmax)).sum(-1), atol=1e-5
    )
    grad = jax.grad(lambda x: dist.cross_entropy(x, target).sum())(logits)
    np.testing.assert_allclose(grad, softmax - target, atol=1e-6)


def test_c51_loss_under_jit_and_vmap():
    """A C51-style loss: jit + vmap run, gradients reach only the online logits."""
    values, probs, support = c51_batch(5, batch=8)
    rng = np.random.default_rng(5)
    online = rng.normal(size=(8, 51)).astype(np.float32)

    def loss(online_logits, values, target_probs):
        target = jax.lax.stop_gradient(dist.categorical_projection(values, target_probs, support))
        return dist.cross_entropy(online_logits, target)

    batched = jax.jit(jax.vmap(loss))
    per_example = batched(online, values, probs)
    np.testing.assert_allclose(per_example, [loss(o, v, p) for o, v, p in zip(online, values, probs)], rtol=1e-5)
    g_online, g_probs = jax.grad(lambda o, p: batched(o, values, p).mean(), argnums=(0, 1))(online, probs)
    assert np.abs(np.asarray(g_online)).sum() > 0.0
    np.testing.assert_array_equal(g_probs, 0.0)


def test_targets_under_jit_and_vmap():
    centres = dist.bin_centres(-1.0, 1.0, 21)
    y = jnp.linspace(-0.5, 0.5, 6)
    hl = jax.jit(jax.vmap(lambda v: dist.hl_gauss(v, -1.0, 1.0, 21)))
    np.testing.assert_allclose(hl(y), dist.hl_gauss(y, -1.0, 1.0, 21), atol=1e-6)
    # A traced sigma_ratio (e.g. swept with vmap) is allowed.
    sweep = jax.jit(jax.vmap(lambda s: dist.hl_gauss(y, -1.0, 1.0, 21, s)))(jnp.array([0.5, 0.75, 1.0]))
    assert sweep.shape == (3, 6, 21)
    np.testing.assert_allclose(sweep[1], dist.hl_gauss(y, -1.0, 1.0, 21), atol=1e-6)
    th = jax.jit(jax.vmap(dist.two_hot, in_axes=(0, None)))(y, centres)
    np.testing.assert_allclose(th @ centres, y, atol=1e-6)
