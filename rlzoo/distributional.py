"""Value distributions on a fixed grid, for distributional and classification value losses.

A value head that outputs logits over K fixed points (atoms of a support, or the
centres of bins) is trained with a cross-entropy against a target distribution on
the same points, and read out as the expected value. This module builds the grids
and the target distributions:

* ``categorical_projection``: C51's projection of a shifted and scaled
  distribution (e.g. r + γ(1 - term)·z under the target network) back onto the
  fixed support;
* ``two_hot``: a scalar target as mass on its two neighbouring points;
* ``hl_gauss``: a scalar target as a Gaussian histogram over bins (HL-Gauss);

plus ``expected_value`` and ``cross_entropy`` on logits. The grids
(``make_support``, ``bin_edges``, ``bin_centres``) take static Python numbers and
raise ``ConfigError`` on a bad range or count; everything else is pure, jittable
and vmappable, with any leading batch dimensions ``[...]``.

Gradients flow through everything (the projections are piecewise linear in their
inputs), so a caller building a *target* must wrap it in ``jax.lax.stop_gradient``
(or compute it from target-network outputs only); only the logits being trained
should carry gradients. This module holds no networks, no losses over batches
(means, masks, importance weights) and no state.

All points passed in (``support``, centres) must be evenly spaced and increasing,
as the grids made here are; this is assumed, not checked.
"""

from __future__ import annotations

import math
from typing import Union

import chex
import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from rlzoo.trainer import ConfigError, check

Array = jax.Array
Scalar = Union[float, Array]

__all__ = [
    "make_support",
    "bin_edges",
    "bin_centres",
    "categorical_projection",
    "two_hot",
    "hl_gauss",
    "expected_value",
    "cross_entropy",
]


# ---------------------------------------------------------------------------
# Grids (static).
# ---------------------------------------------------------------------------


def _static_float(name: str, value: float) -> float:
    """A finite static Python float from ``value``, else a ConfigError naming ``name``."""
    if isinstance(value, jax.core.Tracer):
        raise ConfigError(f"{name} must be a static Python float, not a traced value")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    check(not isinstance(value, bool) and math.isfinite(number), name, value, "must be a finite real number")
    return number


def _check_grid(v_min: float, v_max: float, count: int, count_name: str) -> tuple[float, float, int]:
    """Validates a static range and a static count; returns them as (float, float, int)."""
    v_min = _static_float("v_min", v_min)
    v_max = _static_float("v_max", v_max)
    check(v_min < v_max, "v_min", v_min, f"must be < v_max={v_max!r}")
    check(isinstance(count, int) and not isinstance(count, bool), count_name, count, "must be a Python int >= 2")
    check(count >= 2, count_name, count, "must be >= 2")
    return v_min, v_max, count


def make_support(v_min: float, v_max: float, num_atoms: int) -> Array:
    """The C51 support: ``num_atoms`` evenly spaced atoms from ``v_min`` to ``v_max``.

    z_i = v_min + i Δz, i = 0..K-1, with Δz = (v_max - v_min) / (K - 1); both ends
    are atoms. Bellemare et al. (2017) use v_min = -10, v_max = 10, K = 51.

    Args:
        v_min: lowest atom, a static Python float.
        v_max: highest atom, a static Python float > v_min.
        num_atoms: K, a static Python int >= 2.

    Returns:
        The atoms, shape [K], in the default float dtype.

    Raises:
        ConfigError: naming ``v_min``/``v_max`` if v_min >= v_max (or either is not
            finite), or ``num_atoms`` if it is not an int >= 2.
    """
    v_min, v_max, num_atoms = _check_grid(v_min, v_max, num_atoms, "num_atoms")
    return jnp.linspace(v_min, v_max, num_atoms)


def bin_edges(v_min: float, v_max: float, num_bins: int) -> Array:
    """Edges of ``num_bins`` equal bins covering [v_min, v_max]: e = linspace(v_min, v_max, m + 1).

    Args:
        v_min: left edge of the first bin, a static Python float.
        v_max: right edge of the last bin, a static Python float > v_min.
        num_bins: m, a static Python int >= 2.

    Returns:
        The edges e_0..e_m, shape [m + 1].

    Raises:
        ConfigError: as ``make_support``, naming ``num_bins`` for the count.
    """
    v_min, v_max, num_bins = _check_grid(v_min, v_max, num_bins, "num_bins")
    return jnp.linspace(v_min, v_max, num_bins + 1)


def bin_centres(v_min: float, v_max: float, num_bins: int) -> Array:
    """Centres of the bins of ``bin_edges``: c_i = (e_i + e_{i+1}) / 2.

    These are the points an HL-Gauss or two-hot value head is read out on: c_i =
    v_min + (i + 1/2) ς with bin width ς = (v_max - v_min) / m, so they do *not*
    reach v_min and v_max (a two-hot target on the centres clips to [c_0, c_{m-1}]).

    Returns:
        The centres, shape [m].

    Raises:
        ConfigError: as ``bin_edges``.
    """
    edges = bin_edges(v_min, v_max, num_bins)
    return 0.5 * (edges[:-1] + edges[1:])


# ---------------------------------------------------------------------------
# Target distributions (traced).
# ---------------------------------------------------------------------------


def _float_dtype(*arrays: Array) -> jnp.dtype:
    """The floating dtype the inputs promote to (the default float if all are ints/bools)."""
    dtype = jnp.result_type(*arrays)
    if jnp.issubdtype(dtype, jnp.floating):
        return dtype
    return jnp.result_type(float)


def _check_points(points: Array, name: str) -> None:
    chex.assert_rank(points, 1)
    if points.shape[0] < 2:
        raise ValueError(f"`{name}` must hold at least 2 points; got shape {points.shape}.")


def _hat_weights(x: Array, points: Array) -> Array:
    """Linear-interpolation weights of x on evenly spaced points, x clipped to their range.

    With b = (clip(x, z_0, z_{K-1}) - z_0) / Δz the fractional index of x, the
    weight on point i is clip(1 - |b - i|, 0, 1) = clip(1 - |x - z_i| / Δz, 0, 1):
    at most two neighbouring points get mass, summing to 1 and with mean x.
    Working in index space makes the two weights sum to 1 to rounding.

    Args:
        x: shape [...].
        points: evenly spaced increasing points, shape [K].

    Returns:
        Weights of shape [..., K].
    """
    num_points = points.shape[0]
    low, high = points[0], points[-1]
    delta = (high - low) / (num_points - 1)
    index = (jnp.clip(x, low, high) - low) / delta
    grid = jnp.arange(num_points, dtype=index.dtype)
    return jnp.clip(1.0 - jnp.abs(index[..., None] - grid), 0.0, 1.0)


def categorical_projection(values: Array, probs: Array, support: Array) -> Array:
    """C51's projection of a distribution on arbitrary values onto a fixed support.

    The source distribution puts mass p_j on the value Tz_j; the result puts mass
    m_i on the atom z_i of the fixed support, Δz its spacing::

        m_i = Σ_j p_j · clip(1 - |clip(Tz_j, v_min, v_max) - z_i| / Δz, 0, 1)

    i.e. each Tz_j, clipped to [v_min, v_max] = [z_0, z_{K-1}], shares its mass
    between its two neighbouring atoms in proportion to closeness. The total mass
    is kept, and so is the mean of the clipped values: Σ_i m_i z_i = Σ_j p_j
    clip(Tz_j). Typical use, for a transition batch and the target network's
    probabilities ``p_next`` of the greedy next action::

        values = r[:, None] + gamma * (1 - term[:, None]) * support[None, :]
        target = jax.lax.stop_gradient(categorical_projection(values, p_next, support))
        loss = cross_entropy(online_logits_of_taken_action, target)

    See Bellemare et al. (2017), "A Distributional Perspective on Reinforcement
    Learning", eq. 7 and Algorithm 1 (https://arxiv.org/abs/1707.06887).

    Args:
        values: Tz_j, the values carrying the source mass, shape [..., K_src]
            (any order, any range; K_src need not equal K).
        probs: p_j, the source probabilities, shape [..., K_src].
        support: z_i, evenly spaced increasing atoms (e.g. ``make_support``), [K].

    Returns:
        The projected probabilities m, shape [..., K]. Costs O(K_src · K) memory
        and time per distribution (a dense weight matrix, no scatter), which is
        cheap for the usual K ≈ 51 and differentiable in ``values`` and ``probs``.
    """
    if jnp.ndim(values) < 1:
        raise ValueError(f"`values` must have shape [..., K_src]; got a scalar of shape {jnp.shape(values)}.")
    chex.assert_equal_shape([values, probs])
    _check_points(support, "support")
    dtype = _float_dtype(values, probs, support)
    values = jnp.asarray(values, dtype)
    probs = jnp.asarray(probs, dtype)
    support = jnp.asarray(support, dtype)
    weights = _hat_weights(values, support)  # [..., K_src, K]
    return jnp.einsum("...j,...ji->...i", probs, weights)


def two_hot(y: Array, points: Array) -> Array:
    """A scalar target as mass on the two points around it, in proportion to closeness.

    With y clipped to [z_0, z_{K-1}] and z_l <= y <= z_{l+1} its neighbours::

        p_l = (z_{l+1} - y) / Δz,   p_{l+1} = (y - z_l) / Δz,   0 elsewhere

    so Σ_i p_i z_i = clip(y, z_0, z_{K-1}) exactly (up to rounding). This is
    ``categorical_projection`` of a point mass at y. ``points`` may be a C51
    support or bin centres (``bin_centres``); with centres, y clips to the outer
    centres, not to v_min and v_max.

    See Schrittwieser et al. (2020), "Mastering Atari, Go, Chess and Shogi by
    Planning with a Learned Model", Appendix F (https://arxiv.org/abs/1911.08265);
    Farebrother et al. (2024), "Stop Regressing", section 3
    (https://arxiv.org/abs/2403.03950).

    Args:
        y: scalar targets, shape [...].
        points: evenly spaced increasing points, shape [K].

    Returns:
        Probabilities of shape [..., K].
    """
    _check_points(points, "points")
    dtype = _float_dtype(y, points)
    return _hat_weights(jnp.asarray(y, dtype), jnp.asarray(points, dtype))


def hl_gauss(
        y: Array,
        v_min: float,
        v_max: float,
        num_bins: int,
        sigma_ratio: Scalar = 0.75,
) -> Array:
    """HL-Gauss: a scalar target as a Gaussian histogram over equal bins.

    With edges e = linspace(v_min, v_max, m + 1), bin width ς = (v_max - v_min) / m
    and σ = sigma_ratio · ς, the bin probabilities of N(y, σ²) truncated to
    [v_min, v_max] are::

        p_i = [F(e_{i+1}) - F(e_i)] / [F(e_m) - F(e_0)],   F(x) = erf((x - y) / (√2 σ))

    and the value is read out on the bin centres (``bin_centres``) with
    ``expected_value``. y is first clipped to [v_min, v_max] (so that the
    normaliser never vanishes); targets within a few σ of either end are
    truncated, so their read-out mean is pulled inwards. For interior targets the
    read-out mean Σ p_i c_i differs from y only by a periodic aliasing error of
    amplitude about (ς/π)·exp(-2π² sigma_ratio²): ≈ 5e-6 ς at the default 0.75
    (≈ 2e-3 ς at 0.5), below float32 rounding for ordinary ranges.

    See Farebrother et al. (2024), "Stop Regressing: Training Value Functions via
    Classification for Scalable Deep RL", section 3.1 and Appendix A
    (https://arxiv.org/abs/2403.03950); they recommend sigma_ratio = 0.75.

    Args:
        y: scalar targets, shape [...].
        v_min: left edge of the first bin, a static Python float.
        v_max: right edge of the last bin, a static Python float > v_min.
        num_bins: m, a static Python int >= 2.
        sigma_ratio: σ / ς, positive (a Python float, checked, or a traced scalar).

    Returns:
        Probabilities of shape [..., num_bins].

    Raises:
        ConfigError: as ``bin_edges``, or naming ``sigma_ratio`` if it is a
            concrete number <= 0.
    """
    v_min, v_max, num_bins = _check_grid(v_min, v_max, num_bins, "num_bins")
    if not isinstance(sigma_ratio, jax.core.Tracer):
        if jnp.ndim(sigma_ratio) != 0:
            raise ConfigError(f"sigma_ratio must be a scalar; got shape {jnp.shape(sigma_ratio)}")
        check(float(sigma_ratio) > 0.0, "sigma_ratio", sigma_ratio, "must be > 0")
    dtype = _float_dtype(y)
    y = jnp.clip(jnp.asarray(y, dtype), v_min, v_max)
    edges = jnp.linspace(v_min, v_max, num_bins + 1, dtype=dtype)
    sigma = jnp.asarray(sigma_ratio, dtype) * ((v_max - v_min) / num_bins)
    cdf = erf((edges - y[..., None]) / (jnp.sqrt(jnp.asarray(2.0, dtype)) * sigma))
    # F is monotone but float erf is not quite: clip rounding-level negatives in the
    # tails. Σ_i mass_i telescopes to F(e_m) - F(e_0), so dividing by the sum is the
    # equation above, and sums to 1 to rounding.
    mass = jnp.maximum(cdf[..., 1:] - cdf[..., :-1], 0.0)
    return mass / jnp.sum(mass, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# Read-out and loss on logits.
# ---------------------------------------------------------------------------


def expected_value(logits: Array, points: Array) -> Array:
    """The mean of the categorical distribution given by logits: Σ_i softmax(logits)_i z_i.

    Args:
        logits: unnormalised log-probabilities, shape [..., K].
        points: the values z_i of the K outcomes (a support or bin centres), [K].

    Returns:
        The expected values, shape [...].
    """
    chex.assert_rank(points, 1)
    chex.assert_axis_dimension(logits, -1, points.shape[0])
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * points, axis=-1)


def cross_entropy(logits: Array, target_probs: Array) -> Array:
    """Cross-entropy of a target distribution against logits: -Σ_i p_i log softmax(logits)_i.

    The gradient w.r.t. the logits is softmax(logits) - p (for p summing to 1).
    Pass targets through ``jax.lax.stop_gradient``; no reduction over the batch.

    Args:
        logits: unnormalised log-probabilities, shape [..., K].
        target_probs: target probabilities p, shape [..., K].

    Returns:
        The cross-entropies, shape [...].
    """
    chex.assert_equal_shape([logits, target_probs])
    return -jnp.sum(target_probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)
