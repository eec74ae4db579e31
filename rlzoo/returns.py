"""Return targets over time-major rollouts with separate termination and truncation.

Every function here turns a rollout of rewards, episode-end flags and value
estimates into per-step targets (advantages or returns) that an algorithm then
regresses or weights against. Arrays are time-major, shape ``[T, ...]`` with any
trailing batch dimensions (e.g. ``[T, num_envs]``). An episode may end inside the
rollout in two ways, kept apart on purpose: *termination* (a true terminal state,
nothing to bootstrap from) and *truncation* (a time limit, bootstrap from the value
of the true final observation). For that reason the caller passes ``next_values``,
where ``next_values[t]`` is V(s'_t) of the true next observation of step ``t`` (on a
done step, the final observation of the ended episode, not the reset observation).
The functions are pure, jittable and vmappable (``gamma`` and ``lam`` may be traced
scalars). This module holds no losses, no networks and no state.

Conventions, shared by all functions:

* ``rewards[t]`` is r_t, received after acting at s_t.
* ``terminated[t]`` / ``truncated[t]`` (bool or 0/1 float) say the episode ended at
  step t by termination / truncation; done_t = terminated_t OR truncated_t, and
  step t+1 then belongs to a new episode.
* ``values[t]`` is V(s_t); ``next_values[t]`` is V(s'_t) as above.
* Nothing is carried beyond the end of the rollout: the last step bootstraps from
  ``next_values[T-1]`` unless it is terminated.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import chex
import jax
import jax.numpy as jnp

from rlzoo.trainer import check_scalar

Array = jax.Array
Scalar = Union[float, Array]

__all__ = ["gae", "lambda_returns", "n_step_returns", "discounted_returns"]


def _float_dtype(rewards: Array) -> jnp.dtype:
    """The dtype all computation runs in: that of the rewards, if floating."""
    dtype = jnp.asarray(rewards).dtype
    if jnp.issubdtype(dtype, jnp.floating):
        return dtype
    return jnp.result_type(float)


def _check_time_major(*arrays: Array) -> None:
    """All arrays share one shape of rank >= 1 whose leading axis is time."""
    if jnp.ndim(arrays[0]) < 1:
        raise ValueError(
                "Expected time-major arrays of shape [T, ...]; got a scalar "
                f"of shape {jnp.shape(arrays[0])}."
        )
    chex.assert_equal_shape(arrays)



def _flags(terminated: Array, truncated: Array, dtype) -> tuple[Array, Array]:
    """Returns (term, done) as 0/1 arrays of ``dtype``."""
    term = jnp.asarray(terminated).astype(dtype)
    trunc = jnp.asarray(truncated).astype(dtype)
    done = 1.0 - (1.0 - term) * (1.0 - trunc)
    return term, done


def _last_step(shape: tuple[int, ...], dtype) -> Array:
    """1 at t = T-1, 0 elsewhere, broadcast to ``shape``."""
    last = jnp.zeros(shape[:1], dtype).at[-1].set(1.0)
    return jnp.broadcast_to(last.reshape((-1,) + (1,) * (len(shape) - 1)), shape)


def gae(
        rewards: Array,
        values: Array,
        next_values: Array,
        terminated: Array,
        truncated: Array,
        gamma: Scalar,
        lam: Scalar,
) -> tuple[Array, Array]:
    """Generalised advantage estimates and the matching value targets.

    With done_t = terminated_t OR truncated_t::

        δ_t = r_t + γ (1 - terminated_t) V(s'_t) - V(s_t)
        A_t = δ_t + γ λ (1 - done_t) A_{t+1},        A_T := 0
        value_target_t = A_t + V(s_t)

    The TD error bootstraps from ``next_values`` unless the step terminated (so a
    truncated step still bootstraps from the value of its true final observation);
    the recursion never crosses an episode end or the end of the rollout.

    See Schulman et al. (2016), "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", eq. 16 (https://arxiv.org/abs/1506.02438).

    Args:
        rewards: r_t, shape [T, ...].
        values: V(s_t), shape [T, ...].
        next_values: V(s'_t) of the true next observation, shape [T, ...].
        terminated: episode terminated at step t (bool or 0/1), shape [T, ...].
        truncated: episode truncated at step t (bool or 0/1), shape [T, ...].
        gamma: discount γ, a scalar (may be traced).
        lam: GAE λ, a scalar (may be traced).

    Returns:
        ``(advantages, value_targets)``, each of shape [T, ...].
    """
    _check_time_major(rewards, values, next_values, terminated, truncated)
    check_scalar(gamma=gamma, lam=lam)
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    values = jnp.asarray(values, dtype)
    next_values = jnp.asarray(next_values, dtype)
    gamma = jnp.asarray(gamma, dtype)
    lam = jnp.asarray(lam, dtype)
    term, done = _flags(terminated, truncated, dtype)

    deltas = rewards + gamma * (1.0 - term) * next_values - values
    decay = gamma * lam * (1.0 - done)

    def step(next_advantage, xs):
        delta_t, decay_t = xs
        advantage = delta_t + decay_t * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(
            step, jnp.zeros_like(deltas[0]), (deltas, decay), reverse=True
    )
    return advantages, advantages + values


def lambda_returns(
        rewards: Array,
        next_values: Array,
        terminated: Array,
        truncated: Array,
        gamma: Scalar,
        lam: Scalar,
) -> Array:
    """λ-returns, cut at episode ends and at the end of the rollout.

    With c_t = 1 - done_t, except c_{T-1} := 0 (nothing beyond the rollout)::

        G^λ_t = r_t + γ (1 - terminated_t) [(1 - λ c_t) V(s'_t) + λ c_t G^λ_{t+1}]

    so G^λ_{T-1} = r_{T-1} + γ (1 - terminated_{T-1}) V(s'_{T-1}). λ = 0 gives the
    one-step TD target; λ = 1 gives the Monte Carlo return, bootstrapped only at
    truncation and at the end of the rollout (equal to ``discounted_returns`` with
    ``next_values``). When ``next_values[t] == values[t+1]`` on every non-done step
    t < T-1, this equals the value targets of ``gae``.

    See Sutton & Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed.,
    eq. 12.2 and its recursive form (section 12.1).

    Args:
        rewards: r_t, shape [T, ...].
        next_values: V(s'_t) of the true next observation, shape [T, ...].
        terminated: episode terminated at step t (bool or 0/1), shape [T, ...].
        truncated: episode truncated at step t (bool or 0/1), shape [T, ...].
        gamma: discount γ, a scalar (may be traced).
        lam: mixing λ, a scalar (may be traced).

    Returns:
        The λ-returns, shape [T, ...].
    """
    _check_time_major(rewards, next_values, terminated, truncated)
    check_scalar(gamma=gamma, lam=lam)
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    next_values = jnp.asarray(next_values, dtype)
    gamma = jnp.asarray(gamma, dtype)
    lam = jnp.asarray(lam, dtype)
    term, done = _flags(terminated, truncated, dtype)
    cont = (1.0 - done) * (1.0 - _last_step(rewards.shape, dtype))
    discount = gamma * (1.0 - term)

    def step(next_return, xs):
        r_t, discount_t, cont_t, v_t = xs
        mix = lam * cont_t
        g = r_t + discount_t * ((1.0 - mix) * v_t + mix * next_return)
        return g, g

    _, returns = jax.lax.scan(
            step,
            jnp.zeros_like(rewards[0]),
            (rewards, discount, cont, next_values),
            reverse=True,
    )
    return returns


def n_step_returns(
        rewards: Array,
        next_values: Array,
        terminated: Array,
        truncated: Array,
        gamma: Scalar,
        n: int,
) -> Array:
    """n-step bootstrapped returns that never cross an episode end.

    With m_t = min(n, steps up to and including the first done step at or after
    t, T - t)::

        G^(n)_t = Σ_{k=0}^{m_t-1} γ^k r_{t+k}
                            + γ^{m_t} (1 - terminated_{t+m_t-1}) V(s'_{t+m_t-1})

    At termination there is no bootstrap; at truncation or at the end of the
    rollout the return bootstraps from ``next_values`` of that step. n = 1 gives the
    TD(0) target r_t + γ (1 - terminated_t) V(s'_t); n >= T gives
    ``discounted_returns`` with ``next_values``.

    See Sutton & Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed.,
    eq. 7.1; Mnih et al. (2016), "Asynchronous Methods for Deep Reinforcement
    Learning" (https://arxiv.org/abs/1602.01783).

    Args:
        rewards: r_t, shape [T, ...].
        next_values: V(s'_t) of the true next observation, shape [T, ...].
        terminated: episode terminated at step t (bool or 0/1), shape [T, ...].
        truncated: episode truncated at step t (bool or 0/1), shape [T, ...].
        gamma: discount γ, a scalar (may be traced).
        n: number of steps, a static Python int >= 1.

    Returns:
        The n-step returns, shape [T, ...].
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a Python int >= 1; got n={n!r}.")
    _check_time_major(rewards, next_values, terminated, truncated)
    check_scalar(gamma=gamma)
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    next_values = jnp.asarray(next_values, dtype)
    _, done = _flags(terminated, truncated, dtype)
    # A step "ends" the sum if the episode ends there or the rollout does.
    ends = 1.0 - (1.0 - done) * (1.0 - _last_step(rewards.shape, dtype))

    def shift(x: Array, k: int) -> Array:
        """x[t + k] at position t, zero past the end of the rollout."""
        if k == 0:
            return x
        return jnp.concatenate([x[k:], jnp.zeros_like(x[:k])], axis=0)

    horizon = min(n, rewards.shape[0])  # Every sum ends by the rollout's end.
    ended_before = jnp.cumsum(jnp.stack([jnp.zeros_like(ends)] + [shift(ends, k) for k in range(horizon - 1)]), axis=0)
    window = n_step_window(jnp.stack([shift(rewards, k) for k in range(horizon)]),
                           jnp.stack([shift(jnp.asarray(terminated), k) for k in range(horizon)]),
                           ended_before == 0, gamma)
    last = jnp.arange(rewards.shape[0]).reshape((-1,) + (1,) * (rewards.ndim - 1)) + window.steps - 1
    return window.returns + window.discount * jnp.take_along_axis(next_values, last, axis=0)


class NStepWindow(NamedTuple):
    """What `n_step_window` returns: the reward sum, the bootstrap discount and the steps summed m."""

    returns: Array
    discount: Array
    steps: Array


def n_step_window(rewards: Array, terminated: Array, in_sum: Array, gamma: Scalar) -> NStepWindow:
    """The n-step return of windows of consecutive steps t..t+n-1, without the bootstrap value.

    With m = the number of steps in the sum (a prefix of the window: the sum
    stops at the first episode end, at the window's last usable step, or at the
    n-th reward)::

        returns  = Σ_{k=0}^{m-1} γ^k r_{t+k}
        discount = γ^m (1 - terminated_{t+m-1})

    so G^(n)_t = returns + discount * V(s'_{t+m-1}) (Sutton & Barto, 2018, eq. 7.1).
    This is the one n-step sum of rlzoo: `n_step_returns` (rollouts),
    `rlzoo.replay.sample_n_step` (replay) and SPR's sequences all call it.

    Args:
        rewards: r_{t+k}, shape [n, ...] (the window's step k on the leading axis).
        terminated: terminated_{t+k} (bool or 0/1), shape [n, ...].
        in_sum: True for the steps in the sum, a prefix along the leading axis
            (True at k = 0), shape [n, ...].
        gamma: discount γ, a scalar (may be traced).

    Returns:
        ``NStepWindow(returns, discount, steps)``, each of shape [...]; steps is m (int32).
    """
    chex.assert_equal_shape([rewards, terminated, in_sum])
    check_scalar(gamma=gamma)
    dtype = _float_dtype(rewards)
    gamma = jnp.asarray(gamma, dtype)
    in_sum = jnp.asarray(in_sum, bool)
    in_sum_next = jnp.concatenate([in_sum[1:], jnp.zeros_like(in_sum[:1])])  # the sum goes on at step k + 1

    def add_step(carry, step):
        """Step k of the window: its reward joins the sum; where the sum stops, the discount is γ^{k+1}."""
        returns, discount, gamma_k = carry
        reward, terminated_k, in_sum_k, in_sum_after = step
        returns = returns + jnp.where(in_sum_k, gamma_k * reward.astype(dtype), 0.0)
        gamma_k = gamma_k * gamma
        stops_here = in_sum_k & ~in_sum_after
        discount = jnp.where(stops_here, gamma_k * (1.0 - (terminated_k != 0).astype(dtype)), discount)
        return (returns, discount, gamma_k), None

    zeros = jnp.zeros(rewards.shape[1:], dtype)
    # A scan, not a Python loop: the trace stays one step long however large n is (issue 24: --n-step 100000).
    (returns, discount, _), _ = jax.lax.scan(add_step, (zeros, zeros, jnp.ones((), dtype)),
                                             (rewards, jnp.asarray(terminated), in_sum, in_sum_next))
    return NStepWindow(returns, discount, jnp.sum(in_sum, axis=0, dtype=jnp.int32))


def discounted_returns(
        rewards: Array,
        terminated: Array,
        truncated: Array,
        gamma: Scalar,
        next_values: Optional[Array] = None,
) -> Array:
    """Monte Carlo discounted returns within the rollout, cut at episode ends.

    With done_t = terminated_t OR truncated_t::

        G_t = r_t + γ (1 - done_t) G_{t+1} + γ b_t V(s'_t),     G_T := 0

    where b_t = 1 on truncated steps and on the last step of the rollout, unless
    terminated_t, and 0 otherwise. With ``next_values=None`` nothing is
    bootstrapped (b_t = 0: the return beyond any boundary counts as 0). With
    ``next_values`` this equals ``lambda_returns`` at λ = 1.

    See Sutton & Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed.,
    eq. 3.9.

    Args:
        rewards: r_t, shape [T, ...].
        terminated: episode terminated at step t (bool or 0/1), shape [T, ...].
        truncated: episode truncated at step t (bool or 0/1), shape [T, ...].
        gamma: discount γ, a scalar (may be traced).
        next_values: optional V(s'_t) of the true next observation, shape [T, ...].

    Returns:
        The discounted returns, shape [T, ...].
    """
    if next_values is None:
        _check_time_major(rewards, terminated, truncated)
    else:
        _check_time_major(rewards, next_values, terminated, truncated)
    check_scalar(gamma=gamma)
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    gamma = jnp.asarray(gamma, dtype)
    term, done = _flags(terminated, truncated, dtype)
    cont = (1.0 - done) * (1.0 - _last_step(rewards.shape, dtype))
    if next_values is None:
        immediate = rewards
    else:
        next_values = jnp.asarray(next_values, dtype)
        # Bootstrap where the sum is cut (episode end or rollout end) but the
        # episode was not terminated.
        immediate = rewards + gamma * (1.0 - term) * (1.0 - cont) * next_values

    def step(next_return, xs):
        immediate_t, cont_t = xs
        g = immediate_t + gamma * cont_t * next_return
        return g, g

    _, returns = jax.lax.scan(
            step, jnp.zeros_like(rewards[0]), (immediate, cont), reverse=True
    )
    return returns
