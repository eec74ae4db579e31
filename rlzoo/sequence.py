"""Sequence models with episode resets: S5 (parallel scan), GRU and LSTM (sequential scan).

Every model here keeps one interface, so an agent can swap them with a flag:

* ``model.initialize_carry(batch_size)`` returns the zero hidden state for a batch
  (a pytree of arrays with leading axis ``batch_size``; no parameters needed).
* ``model.apply(params, carry, (x, reset))`` returns ``(carry, y)``. With
  ``x: [T, B, F]`` and ``reset: [T, B]`` it runs over a time-major sequence; with
  ``x: [B, F]`` and ``reset: [B]`` it takes a single step (for acting).
* ``reset[t] = 1`` means step t starts a new episode: the hidden state entering
  step t is replaced by the zero state before step t's input is read. A
  sequence's first step continues from ``carry`` unless ``reset[0]`` is set, so
  a hidden state can be carried from one rollout to the next.

S5 (Smith, Warrington & Linderman, ICLR 2023, "Simplified State Space Layers for
Sequence Modeling") runs over time with `jax.lax.associative_scan` and the
reset-aware operator of Lu et al. (NeurIPS 2023, "Structured State Space Models
for In-Context Reinforcement Learning"), `resettable_scan` below, or with a
sequential `lax.scan` over the same recurrence (`SCANS`; the default on CPU,
where it is faster). GRU and LSTM step through time with `lax.scan` and reset
their state the same way.

Not here: encoders, policy or value heads, losses (those belong to the agent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.trainer import ConfigError

SEQUENCE_MODELS = ("s5", "gru", "lstm", "none")
SCANS = ("auto", "associative", "sequential")
"""How S5 runs its recurrence over a sequence. Measured on a 2-core x86-64 CPU (XLA CPU,
jax 0.10), forward and gradient over T = 1024, 8 sequences, 128 complex states: "sequential"
(`lax.scan`) takes 7.6 ms, "associative" 107 ms, so "auto" picks "sequential" on CPU and
"associative" on GPU/TPU, where the parallel scan is the point of S5 (not measured here)."""


# --------------------------------------------------------------------------- the resettable scan


def reset_operator(left: tuple, right: tuple) -> tuple:
    """Composes two steps of x_t = A_t x_{t-1} (1 - c_t) + b_t, where c_t is the reset flag.

    (A_i, b_i, c_i) ∘ (A_j, b_j, c_j) = (A_j A_i (1 - c_j) + A_j c_j,
                                         (A_j b_i + b_j)(1 - c_j) + b_j c_j,
                                         c_i (1 - c_j) + c_j)

    (Lu et al., 2023, Sec. 4.1). With c_j = 1 everything before j is forgotten; the
    operator is associative, so `jax.lax.associative_scan` may evaluate it in any
    bracketing. A and b are elementwise (diagonal A); c broadcasts against them.
    """
    a_i, b_i, c_i = left
    a_j, b_j, c_j = right
    keep = 1 - c_j
    return (a_j * a_i * keep + a_j * c_j, (a_j * b_i + b_j) * keep + b_j * c_j, c_i * keep + c_j)


def resettable_scan(a: jax.Array, b: jax.Array, reset: jax.Array, initial: jax.Array,
                    method: str = "associative") -> jax.Array:
    """All states of x_t = A_t x_{t-1} + b_t, with x_{t-1} := 0 where reset_t = 1.

    Args:
        a: diagonal transitions A_t, shape [T, ...] like ``b`` (real or complex), or a
            time-invariant A broadcastable against ``b.shape[1:]`` (e.g. [P] for b of shape [T, B, P]).
        b: inputs b_t, shape [T, ...].
        reset: reset flags c_t in {0, 1}, shape [T, ...] broadcastable against ``b``
            from the left (e.g. [T, B] for b of shape [T, B, P]).
        initial: x_{-1}, shape ``b.shape[1:]``: the state carried in from before the sequence.
        method: "associative": `jax.lax.associative_scan` with `reset_operator` (log T
            parallel rounds, about twice the work: for parallel hardware); "sequential":
            `lax.scan` over t (T steps, the least work: faster on CPU); "auto": the
            sequential scan on CPU, the associative one elsewhere (see `SCANS`).

    Returns:
        x_t for every t, shape [T, ...]; x_{T-1} is the carry for the next sequence.
    """
    method = resolve_scan(method)
    chex.assert_shape(initial, b.shape[1:])
    c = reset.astype(b.real.dtype).reshape(reset.shape + (1,) * (b.ndim - reset.ndim))
    if method == "sequential":
        return _sequential_scan(a, b, c, initial)
    a = jnp.broadcast_to(a, b.shape)
    # Fold the carried-in state into the first input: b_0 += A_0 x_{-1} (1 - c_0).
    b = b.at[0].add(a[0] * initial * (1 - c[0]))
    _, states, _ = jax.lax.associative_scan(reset_operator, (a, b, jnp.broadcast_to(c, a.shape).astype(a.dtype)))
    return states


def _sequential_scan(a: jax.Array, b: jax.Array, c: jax.Array, initial: jax.Array) -> jax.Array:
    """x_t = A_t x_{t-1} (1 - c_t) + b_t, one step after another (`resettable_scan`'s sequential method)."""
    time_varying = a.shape == b.shape

    def step(x, inputs):
        a_t, b_t, c_t = inputs if time_varying else (a, *inputs)
        x = a_t * x * (1 - c_t) + b_t
        return x, x

    return jax.lax.scan(step, initial, (a, b, c) if time_varying else (b, c))[1]


def check_scan(method: str) -> None:
    """Raises a ConfigError unless `method` is one of SCANS."""
    if method not in SCANS:
        raise ConfigError(f"scan={method!r} is not allowed: one of {', '.join(SCANS)}")


def resolve_scan(method: str) -> str:
    """"auto" -> "sequential" on CPU, "associative" on other backends; other methods unchanged."""
    check_scan(method)
    if method != "auto":
        return method
    return "sequential" if jax.default_backend() == "cpu" else "associative"


# --------------------------------------------------------------------------- S5


def hippo_legs_normal(state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the normal part of HiPPO-LegS (HiPPO-N).

    HiPPO-LegS: A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 for n < k.
    Adding p p^T with p_n = sqrt(n + 1/2) gives S = -I/2 + (skew-symmetric), a
    normal matrix with eigenvalues -1/2 + i ω (Smith et al., 2023, Sec. 4.1 and App. B.1).
    Returns (Lambda [N] complex, V [N, N] unitary) with S = V diag(Lambda) V^H.
    """
    n = np.arange(state_size)
    root = np.sqrt(2 * n + 1.0)
    legs = -np.where(n[:, None] > n[None, :], np.outer(root, root), np.diag(n + 1.0))
    legs = np.where(n[:, None] < n[None, :], 0.0, legs)
    p = np.sqrt(n + 0.5)
    normal = legs + np.outer(p, p)
    skew = normal - np.diag(np.diagonal(normal))
    omega, vectors = np.linalg.eigh(-1j * skew)
    return np.diagonal(normal).mean() + 1j * omega, vectors


def zoh_discretize(lam: jax.Array, b: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Zero-order hold: Lambda_bar = exp(Lambda Δ), B_bar = (Lambda_bar - 1) / Lambda * B (Smith et al., eq. 6)."""
    lam_bar = jnp.exp(lam * step)
    return lam_bar, ((lam_bar - 1) / lam)[:, None] * b


class S5SSM(nn.Module):
    """One diagonal complex state-space layer: x_t = Λ̄ x_{t-1} + B̄ u_t, y_t = 2 Re(C̃ x_t) + D u_t.

    Conjugate symmetry: of the ``state_size`` HiPPO-N eigenvalues only one of each
    conjugate pair is kept (``state_size // 2`` complex states), so the output takes
    twice the real part. Λ is initialised from HiPPO-N, B̃ = V^H B and C̃ = C V with
    real B, C (lecun-normal, truncated normal), and a learnable per-state log Δ
    drawn uniformly from [log dt_min, log dt_max].
    """

    features: int
    state_size: int
    dt_min: float = 0.001
    dt_max: float = 0.1
    scan: str = "auto"  # how `resettable_scan` runs over a sequence: one of SCANS

    def setup(self):
        lam, vectors = hippo_legs_normal(self.state_size)
        half = self.state_size // 2
        lam, vectors = lam[:half], vectors[:, :half]  # one eigenvalue of each conjugate pair
        self.lambda_re = self.param("lambda_re", lambda _: jnp.asarray(lam.real, jnp.float32))
        self.lambda_im = self.param("lambda_im", lambda _: jnp.asarray(lam.imag, jnp.float32))
        v = jnp.asarray(vectors, jnp.complex64)

        def init_b(key):
            b = nn.initializers.lecun_normal()(key, (self.state_size, self.features))
            b_tilde = v.conj().T @ b.astype(jnp.complex64)
            return jnp.stack([b_tilde.real, b_tilde.imag], -1)

        def init_c(key):
            c = nn.initializers.truncated_normal(1.0)(key, (self.features, self.state_size)) / np.sqrt(self.state_size)
            c_tilde = c.astype(jnp.complex64) @ v
            return jnp.stack([c_tilde.real, c_tilde.imag], -1)

        self.b = self.param("B", init_b)
        self.c = self.param("C", init_c)
        self.d = self.param("D", nn.initializers.normal(1.0), (self.features,))
        self.log_step = self.param("log_step", lambda key: jax.random.uniform(
            key, (half,), minval=np.log(self.dt_min), maxval=np.log(self.dt_max)))

    def discretized(self) -> tuple[jax.Array, jax.Array]:
        lam = self.lambda_re + 1j * self.lambda_im
        b = self.b[..., 0] + 1j * self.b[..., 1]
        return zoh_discretize(lam, b, jnp.exp(self.log_step))

    def output(self, states: jax.Array, u: jax.Array) -> jax.Array:
        # 2 Re(C̃ x) with real matrix products (XLA on CPU multiplies complex matrices far more slowly).
        # The barrier materialises [Re x, Im x] so the products run as plain matrix multiplies.
        parts = jax.lax.optimization_barrier(jnp.concatenate([states.real, states.imag], -1))
        return 2 * parts @ jnp.concatenate([self.c[..., 0], -self.c[..., 1]], -1).T + self.d * u

    def __call__(self, carry: jax.Array, u: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        # The barrier keeps XLA from fusing exp(Λ Δ) into every element of the scan (a large slowdown on CPU).
        lam_bar, b_bar = jax.lax.optimization_barrier(self.discretized())
        both = u @ jnp.concatenate([b_bar.real, b_bar.imag]).T  # B̄ u for real u: [Re, Im] in one product
        # The state keeps the carry's dtype (complex64) also under JAX_ENABLE_X64, where inputs may be float64.
        lam_bar, bu = lam_bar.astype(carry.dtype), jax.lax.complex(*jnp.split(both, 2, axis=-1)).astype(carry.dtype)
        if u.ndim == carry.ndim:  # one step: [B, H]
            states = lam_bar * carry * (1 - reset[:, None]) + bu
            return states, self.output(states, u)
        states = resettable_scan(lam_bar, bu, reset, carry, self.scan)
        return states[-1], self.output(states, u)


class S5Block(nn.Module):
    """Pre-norm residual block: x + GLU(GELU(S5(LayerNorm(x)))), GLU(z) = W1 z * sigmoid(W2 z)."""

    features: int
    state_size: int
    scan: str = "auto"

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        carry, y = S5SSM(self.features, self.state_size, scan=self.scan)(carry, nn.LayerNorm()(x), reset)
        y = nn.gelu(y)
        y = nn.Dense(self.features)(y) * nn.sigmoid(nn.Dense(self.features)(y))
        return carry, x + y


class S5(nn.Module):
    """A stack of ``num_layers`` S5 blocks of width ``features`` (inputs are projected to it first).

    ``scan`` picks how each block runs its recurrence over a sequence (`SCANS`; "auto":
    sequential on CPU, associative elsewhere); every choice computes the same states.
    """

    features: int
    state_size: int
    num_layers: int = 1
    scan: str = "auto"

    def initialize_carry(self, batch_size: int) -> tuple[jax.Array, ...]:
        return tuple(jnp.zeros((batch_size, self.state_size // 2), jnp.complex64) for _ in range(self.num_layers))

    @nn.compact
    def __call__(self, carry: tuple, inputs: tuple[jax.Array, jax.Array]) -> tuple[tuple, jax.Array]:
        x, reset = inputs
        _check_inputs(x, reset)
        x = nn.Dense(self.features)(x)
        new_carry = []
        for layer_carry in carry:
            layer_carry, x = S5Block(self.features, self.state_size, self.scan)(layer_carry, x,
                                                                               reset.astype(jnp.float32))
            new_carry.append(layer_carry)
        return tuple(new_carry), x


# --------------------------------------------------------------------------- recurrent baselines


class _ResetCell(nn.Module):
    """An RNN cell whose incoming state is zeroed where `reset` is set."""

    cell_type: Callable[..., nn.RNNCellBase]
    features: int

    @nn.compact
    def __call__(self, carry: Any, inputs: tuple[jax.Array, jax.Array]) -> tuple[Any, jax.Array]:
        x, reset = inputs
        carry = jax.tree.map(lambda h: jnp.where(reset[:, None], jnp.zeros_like(h), h), carry)
        return self.cell_type(self.features)(carry, x)


class _Recurrent(nn.Module):
    """Runs a cell over time with `lax.scan` (sequence mode) or once (step mode)."""

    features: int
    cell_type: Callable[..., nn.RNNCellBase] = nn.GRUCell

    def initialize_carry(self, batch_size: int) -> Any:
        zeros = jnp.zeros((batch_size, self.features), jnp.float32)
        return (zeros, zeros) if self.cell_type is nn.OptimizedLSTMCell else zeros

    @nn.compact
    def __call__(self, carry: Any, inputs: tuple[jax.Array, jax.Array]) -> tuple[Any, jax.Array]:
        x, reset = inputs
        _check_inputs(x, reset)
        reset = reset.astype(bool)
        if reset.ndim == 1:
            return _ResetCell(self.cell_type, self.features, name="cell")(carry, (x, reset))
        scanned = nn.scan(_ResetCell, variable_broadcast="params", split_rngs={"params": False})
        return scanned(self.cell_type, self.features, name="cell")(carry, (x, reset))


def GRU(features: int) -> _Recurrent:  # noqa: N802 - reads like a class at the call site
    """A GRU (Cho et al., 2014) of ``features`` units behind the sequence-model interface."""
    return _Recurrent(features, nn.GRUCell)


def LSTM(features: int) -> _Recurrent:  # noqa: N802
    """An LSTM (Hochreiter & Schmidhuber, 1997); the carry is (cell, hidden)."""
    return _Recurrent(features, nn.OptimizedLSTMCell)


class Memoryless(nn.Module):
    """No memory: a dense layer per step, with an empty carry (the feed-forward baseline)."""

    features: int

    def initialize_carry(self, batch_size: int) -> tuple:
        return ()

    @nn.compact
    def __call__(self, carry: tuple, inputs: tuple[jax.Array, jax.Array]) -> tuple[tuple, jax.Array]:
        x, reset = inputs
        _check_inputs(x, reset)
        return carry, nn.gelu(nn.Dense(self.features)(x))


def _check_inputs(x: jax.Array, reset: jax.Array) -> None:
    if x.ndim != reset.ndim + 1:
        raise ValueError(f"x must have one more axis than reset ([T, B, F] with [T, B], or [B, F] with [B]); "
                         f"got x {x.shape} and reset {reset.shape}")
    chex.assert_equal_shape_prefix((x, reset), reset.ndim)


def make_sequence_model(kind: str, features: int, state_size: int = 64, num_layers: int = 1,
                        scan: str = "auto") -> nn.Module:
    """The sequence model called `kind` (one of SEQUENCE_MODELS), with output width `features`.

    `state_size`, `num_layers` and `scan` (one of SCANS) apply to S5 only.
    """
    if kind not in SEQUENCE_MODELS:
        raise ConfigError(f"sequence_model={kind!r} is not allowed: one of {', '.join(SEQUENCE_MODELS)}")
    if features < 1:
        raise ConfigError(f"features={features!r} is not allowed: must be >= 1")
    if kind == "s5":
        if state_size < 2 or state_size % 2:
            raise ConfigError(f"state_size={state_size!r} is not allowed: must be a positive even number "
                              "(conjugate pairs)")
        check_scan(scan)
        return S5(features, state_size, num_layers, scan)
    if kind == "gru":
        return GRU(features)
    if kind == "lstm":
        return LSTM(features)
    return Memoryless(features)
