"""A pure-functional replay buffer that lives inside a jitted training program.

The buffer is a ``ReplayState`` NamedTuple of arrays, so it can sit in a training
state that is scanned, jitted and vmapped over seeds and hyperparameters; every
function here is pure and jittable, with sizes (capacity, number of envs, batch
size, n, sequence length) static. It is for off-policy algorithms that act in
``num_envs`` parallel environments and learn from sampled transitions: uniform or
prioritised one-step samples, n-step returns, and contiguous sequences.

Layout. Storage is time-major per environment: every leaf of the caller's
transition pytree is stored with shape ``[capacity, num_envs, *leaf_shape]`` in the
dtype it was given (uint8 observations stay uint8). Each ``add`` writes one *row*,
one step from all envs. Rows form a ring: ``position`` is the next row to write and
``size`` the number of rows filled (<= capacity); the oldest filled row is
``(position - size) mod capacity`` and the newest ``position - 1``. A *slot* is one
(row, env) pair; ``SlotIndex(rows, envs)`` names sampled slots.

Transitions are whatever pytree the caller stores (a NamedTuple, dict, dataclass
registered as a pytree...). ``sample_n_step`` and ``sample_sequences`` additionally
read three fields, by attribute or by key: ``reward`` (a scalar per env),
``terminated`` and ``truncated`` (bool or 0/1 per env), with the conventions of
``rlzoo.returns``: done_t = terminated_t OR truncated_t, and step t+1 then belongs
to a new episode. Store ``next_obs`` as the TRUE next observation (the final
observation on a done step), so a truncated n-step sample bootstraps correctly.

Also here: ``Transition``, the record that rlzoo's replay learners store, and
``store_step``, which steps a ``VecEnv`` once and writes the row.

Not here: networks, losses, the choice of actions, or a sum-tree. Sampling draws over
all ``capacity * num_envs`` slots with a cumulative sum when prioritised, so one
call costs O(capacity * num_envs) time (uniform sampling is O(batch_size)); that is
cheap next to a network update for buffers of up to a few million slots, and keeps
everything a plain array program.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Union

import chex
import jax
import jax.numpy as jnp

from rlzoo.returns import n_step_window
from rlzoo.trainer import check, check_scalar

Array = jax.Array
Scalar = Union[float, Array]

__all__ = [
    "ReplayState",
    "SlotIndex",
    "Sample",
    "NStepSample",
    "SequenceSample",
    "init",
    "add",
    "can_sample",
    "check_can_sample",
    "sample",
    "update_priorities",
    "sample_n_step",
    "sample_sequences",
    "nbytes",
]


class ReplayState(NamedTuple):
    """The whole buffer: arrays only, so it can be jitted, scanned and vmapped."""

    data: Any
    """The caller's transition pytree, every leaf of shape [capacity, num_envs, ...]."""
    position: Array
    """int32 scalar: the next row to write."""
    size: Array
    """int32 scalar: rows filled so far (<= capacity)."""
    priorities: Array
    """[capacity, num_envs] float32: priority of each slot (0 for unfilled slots)."""
    max_priority: Array
    """float32 scalar: the largest priority seen, given to every new transition."""


class SlotIndex(NamedTuple):
    """Sampled slots: ``data_leaf[rows, envs]`` is the sampled transition's leaf."""

    rows: Array
    """[B] int32 row of each sample (for sequences: the first row)."""
    envs: Array
    """[B] int32 env of each sample."""


class Sample(NamedTuple):
    indices: SlotIndex
    transitions: Any
    """The sampled transitions, every leaf of shape [B, ...]."""
    weights: Array
    """[B] float32 importance weights (all 1 when sampling uniformly)."""


class NStepSample(NamedTuple):
    indices: SlotIndex
    """The slot of each sample's first step t."""
    first: Any
    """The transition at step t, leaves [B, ...] (its ``obs`` and ``action`` are the ones to evaluate)."""
    last: Any
    """The transition at step t + m - 1, leaves [B, ...]; bootstrap from its ``next_obs``."""
    returns: Array
    """[B] Σ_{k<m} γ^k r_{t+k}."""
    discount: Array
    """[B] γ^m (1 - terminated_{t+m-1}): multiply the bootstrap value by it."""
    weights: Array
    """[B] float32 importance weights (all 1 when sampling uniformly)."""


class Transition(NamedTuple):
    """One stored step: what rlzoo's replay learners write (leaves [num_envs, ...] per row)."""

    obs: Array
    action: Array
    reward: Array
    terminated: Array
    truncated: Array
    next_obs: Array  # the TRUE next observation (the final one on a done step)


class SequenceSample(NamedTuple):
    indices: SlotIndex
    """The slot of each sequence's first step."""
    transitions: Any
    """Every leaf of shape [B, length, ...]: consecutive steps of one env."""
    mask: Array
    """[B, length] bool: False for steps after the first done step (another episode)."""


# ---------------------------------------------------------------------------
# Validation and small helpers.
# ---------------------------------------------------------------------------


def _check_int(value: Any, field: str, minimum: int) -> None:
    """A static Python int >= minimum, or a ConfigError naming the field."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    check(is_int and value >= minimum, field, value, f"must be a Python int >= {minimum}")



def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], jnp.dtype]:
    """Shape and dtype of an array, a tracer, a ShapeDtypeStruct or a Python scalar."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), jnp.dtype(leaf.dtype)
    leaf = jnp.asarray(leaf)
    return tuple(leaf.shape), leaf.dtype


def _sizes(state: ReplayState) -> tuple[int, int]:
    """(capacity, num_envs), static."""
    capacity, num_envs = state.priorities.shape
    return capacity, num_envs


def _oldest(state: ReplayState) -> Array:
    """The oldest filled row, (position - size) mod capacity."""
    capacity, _ = _sizes(state)
    return (state.position - state.size) % capacity


def _field(tree: Any, name: str) -> Any:
    """``tree.name`` or ``tree[name]``."""
    if isinstance(tree, Mapping):
        if name in tree:
            return tree[name]
    elif hasattr(tree, name):
        return getattr(tree, name)
    raise ValueError(
        f"n-step and sequence sampling need a `{name}` field (attribute or key) in the "
        f"stored transitions; got a {type(tree).__name__}."
    )


def _episode_fields(state: ReplayState) -> tuple[Array, Array, Array]:
    """The stored (reward, terminated, truncated) leaves, each [capacity, num_envs]."""
    capacity, num_envs = _sizes(state)
    fields = tuple(_field(state.data, name) for name in ("reward", "terminated", "truncated"))
    for name, leaf in zip(("reward", "terminated", "truncated"), fields):
        chex.assert_shape(leaf, (capacity, num_envs), custom_message=f"`{name}` must be a scalar per transition")
    return fields


def _gather(data: Any, rows: Array, envs: Array) -> Any:
    """Every leaf at [rows, envs] (broadcast together), keeping its dtype."""
    return jax.tree.map(lambda leaf: leaf[rows, envs], data)


# ---------------------------------------------------------------------------
# Creating and filling the buffer.
# ---------------------------------------------------------------------------


def init(example: Any, capacity: int, num_envs: int) -> ReplayState:
    """An empty buffer for transitions shaped like ``example``.

    Args:
        example: ONE env's transition (no batch dimensions), as arrays, Python
            scalars or ``jax.ShapeDtypeStruct``s; only shapes and dtypes are used,
            and each leaf is stored in its own dtype.
        capacity: rows kept per env (a static int >= 1); the buffer holds
            ``capacity * num_envs`` transitions.
        num_envs: parallel envs written by each ``add`` (a static int >= 1).

    Returns:
        A ``ReplayState`` with zeroed data, position 0, size 0, zero priorities and
        max_priority 1.
    """
    _check_int(capacity, "capacity", 1)
    _check_int(num_envs, "num_envs", 1)

    def zeros(leaf):
        shape, dtype = _shape_dtype(leaf)
        return jnp.zeros((capacity, num_envs) + shape, dtype)

    return ReplayState(
        data=jax.tree.map(zeros, example),
        position=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
        priorities=jnp.zeros((capacity, num_envs), jnp.float32),
        max_priority=jnp.ones((), jnp.float32),
    )


def add(state: ReplayState, transitions: Any) -> ReplayState:
    """Writes one row, one step from every env, over the oldest row once full.

    Args:
        state: the buffer.
        transitions: the same pytree structure as the stored data, every leaf of
            shape [num_envs, *leaf_shape]; values are cast to the stored dtype.

    Returns:
        The buffer with the row written at ``position``, those slots given priority
        ``max_priority``, ``position`` advanced (mod capacity) and ``size`` grown by
        one up to capacity.
    """
    capacity, _ = _sizes(state)
    stored_struct = jax.tree.structure(state.data)
    given_struct = jax.tree.structure(transitions)
    if stored_struct != given_struct:
        raise ValueError(f"Transitions have structure {given_struct}, but the buffer stores {stored_struct}.")
    paths_and_buffers = jax.tree_util.tree_leaves_with_path(state.data)
    for (path, buffer), leaf in zip(paths_and_buffers, jax.tree.leaves(transitions)):
        chex.assert_shape(leaf, buffer.shape[1:], custom_message=f"leaf {jax.tree_util.keystr(path)}")

    def write(buffer: Array, leaf: Array) -> Array:
        leaf = jnp.asarray(leaf).astype(buffer.dtype)
        return jax.lax.dynamic_update_index_in_dim(buffer, leaf, state.position, axis=0)

    row_priority = jnp.full(state.priorities.shape[1:], state.max_priority, jnp.float32)
    return state._replace(
        data=jax.tree.map(write, state.data, transitions),
        priorities=jax.lax.dynamic_update_index_in_dim(state.priorities, row_priority, state.position, axis=0),
        position=((state.position + 1) % capacity).astype(jnp.int32),
        size=jnp.minimum(state.size + 1, capacity).astype(jnp.int32),
    )


def init_transitions(obs: Array, action: Array, capacity: int, num_envs: int) -> ReplayState:
    """An empty buffer of `Transition`s shaped like one env's `obs` and `action` (stored in their dtypes)."""
    example = Transition(obs, action, jnp.zeros(()), jnp.zeros((), bool), jnp.zeros((), bool), obs)
    return init(example, capacity, num_envs)


def store_step(vec_env: Any, state: Any, key: Array, action: Array, env_action: Array | None = None) -> Any:
    """Steps ``vec_env`` once and writes the `Transition` row into ``state.buffer``.

    ``state`` is any NamedTuple with ``env_state``, ``obs`` and ``buffer`` fields;
    they come back advanced. ``action`` is what is stored; ``env_action`` (default:
    the same) is what the env receives, e.g. an action in [-1, 1] mapped onto the
    env's bounds. ``next_obs`` is the true final observation on a done step.
    """
    env_state, step = vec_env.step(key, state.env_state, action if env_action is None else env_action)
    transition = Transition(state.obs, action, step.reward, step.terminated, step.truncated, step.final_obs)
    return state._replace(env_state=env_state, obs=step.obs, buffer=add(state.buffer, transition))


def update_priorities(state: ReplayState, indices: SlotIndex, priorities: Array) -> ReplayState:
    """Sets the priorities of sampled slots, e.g. to |TD error| + ε, and raises ``max_priority``.

    Priorities should be > 0 (a slot of priority 0 is never drawn by prioritised
    sampling). Where a slot appears twice in ``indices`` one of its values is kept,
    unspecified which.

    Args:
        state: the buffer.
        indices: ``(rows, envs)``, each [B], as returned by a sample.
        priorities: [B] new priorities.

    Returns:
        The buffer with the new priorities and
        ``max_priority = max(max_priority, max(priorities))``.
    """
    rows, envs = indices
    chex.assert_equal_shape((rows, envs, priorities))
    priorities = jnp.asarray(priorities, jnp.float32)
    return state._replace(
        priorities=state.priorities.at[rows, envs].set(priorities),
        max_priority=jnp.maximum(state.max_priority, jnp.max(priorities, initial=0.0)),
    )


# ---------------------------------------------------------------------------
# Whether a batch can be drawn.
# ---------------------------------------------------------------------------


def can_sample(state: ReplayState, batch_size: int, length: int = 1) -> Array:
    """Whether the buffer holds at least ``batch_size`` slots that can start a sample.

    A slot can start a sample of ``length`` consecutive rows (1 for ``sample`` and
    ``sample_n_step``; the sequence length for ``sample_sequences``) if those rows
    are all filled and in order. Samples are drawn with replacement, so this is a
    guard against learning from a nearly empty buffer, not a requirement of the
    sampler; sampling an empty buffer returns meaningless slots.

    Returns:
        A jax bool scalar.
    """
    _check_int(batch_size, "batch_size", 1)
    _check_int(length, "length", 1)
    _, num_envs = _sizes(state)
    starts = jnp.maximum(state.size - length + 1, 0) * num_envs
    return starts >= batch_size


def check_can_sample(batch_size: int, capacity: int, num_envs: int, learning_starts_steps: int) -> None:
    """Host-side check that a batch fits in the buffer filled when learning starts.

    Learning is assumed to start once ``learning_starts_steps`` env steps (summed
    over envs) have been written, i.e. after ceil(learning_starts_steps / num_envs)
    rows (at least one, at most ``capacity``). Call it when validating a config, so
    a bad combination fails before anything compiles.

    Raises:
        ConfigError: if ``batch_size < 1``, ``capacity < 1``, ``num_envs < 1``,
            ``learning_starts_steps < 0``, or ``batch_size`` exceeds the number of
            transitions in the buffer when learning starts.
    """
    _check_int(batch_size, "batch_size", 1)
    _check_int(capacity, "capacity", 1)
    _check_int(num_envs, "num_envs", 1)
    _check_int(learning_starts_steps, "learning_starts", 0)
    rows = min(max(-(-learning_starts_steps // num_envs), 1), capacity)
    filled = rows * num_envs
    check(
        batch_size <= filled,
        "batch_size",
        batch_size,
        f"must be <= the {filled} transitions in the replay buffer when learning starts "
        f"({rows} rows x {num_envs} envs after {learning_starts_steps} env steps, capacity "
        f"{capacity} rows); lower batch_size or raise learning_starts or the buffer size",
    )


# ---------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------


def _draw(
    state: ReplayState,
    key: Array,
    batch_size: int,
    length: int,
    prioritized: bool,
    alpha: Scalar,
    beta: Scalar,
) -> tuple[SlotIndex, Array]:
    """Draws ``batch_size`` start slots (with replacement) and their importance weights.

    A start slot is one whose row and the ``length - 1`` rows after it are filled
    and in write order: logical age ℓ = (row - oldest) mod capacity <= size - length.

    Uniform: an integer over the S = (size - length + 1) * num_envs start slots,
    mapped to (row, env), O(batch_size). Prioritised (Schaul et al., 2016,
    "Prioritized Experience Replay", https://arxiv.org/abs/1511.05952): slot i is
    drawn with probability P(i) = p_i^α / Σ_k p_k^α over start slots (eq. 1), by
    inverting a cumulative sum over all capacity * num_envs slots, O(capacity *
    num_envs); the weights are w_i = (S · P(i))^-β / max_j w_j (eq. 2), the max
    taken over the batch.
    """
    capacity, num_envs = _sizes(state)
    oldest = _oldest(state)
    num_starts = jnp.maximum(state.size - length + 1, 0)
    if not prioritized:
        flat = jax.random.randint(key, (batch_size,), 0, jnp.maximum(num_starts * num_envs, 1))
        rows = ((oldest + flat // num_envs) % capacity).astype(jnp.int32)
        envs = (flat % num_envs).astype(jnp.int32)
        return SlotIndex(rows, envs), jnp.ones((batch_size,), jnp.float32)

    check_scalar(alpha=alpha, beta=beta)
    age = (jnp.arange(capacity) - oldest) % capacity
    startable = jnp.broadcast_to((age < num_starts)[:, None], (capacity, num_envs))
    mass = jnp.where(startable, state.priorities ** jnp.asarray(alpha, jnp.float32), 0.0).reshape(-1)
    cumulative = jnp.cumsum(mass)
    total = cumulative[-1]
    # u in (0, total]: the first slot whose cumulative mass reaches u has mass > 0.
    u = total * (1.0 - jax.random.uniform(key, (batch_size,), jnp.float32))
    flat = jnp.clip(jnp.searchsorted(cumulative, u, side="left"), 0, capacity * num_envs - 1)
    probs = mass[flat] / total
    weights = (num_starts * num_envs * probs) ** -jnp.asarray(beta, jnp.float32)
    weights = weights / jnp.max(weights)
    rows = (flat // num_envs).astype(jnp.int32)
    envs = (flat % num_envs).astype(jnp.int32)
    return SlotIndex(rows, envs), weights.astype(jnp.float32)


def sample(
    state: ReplayState,
    key: Array,
    batch_size: int,
    prioritized: bool = False,
    alpha: Scalar = 0.6,
    beta: Scalar = 0.4,
) -> Sample:
    """Draws a batch of single transitions from the filled slots, with replacement.

    Uniform over filled (row, env) slots, or with ``prioritized`` proportional to
    priority^α with importance weights (N · P(i))^-β normalised by their max over
    the batch (Schaul et al., 2016, eqs. 1 and 2; N = filled slots). An unfilled
    slot is never drawn.

    Args:
        state: the buffer; check ``can_sample`` first (an empty buffer gives
            meaningless samples).
        key: a PRNG key.
        batch_size: B, a static int >= 1.
        prioritized: static; sample by priority instead of uniformly.
        alpha: priority exponent α (scalar, may be traced).
        beta: importance-sampling exponent β (scalar, may be traced).

    Returns:
        ``Sample(indices, transitions, weights)`` with transitions' leaves [B, ...].
    """
    _check_int(batch_size, "batch_size", 1)
    indices, weights = _draw(state, key, batch_size, 1, prioritized, alpha, beta)
    return Sample(indices, _gather(state.data, indices.rows, indices.envs), weights)


def sample_n_step(
    state: ReplayState,
    key: Array,
    batch_size: int,
    n: int,
    gamma: Scalar,
    prioritized: bool = False,
    alpha: Scalar = 0.6,
    beta: Scalar = 0.4,
) -> NStepSample:
    """Draws start steps t as ``sample`` does and sums their n-step returns.

    With m = min(n, steps up to and including the first done step at or after t,
    steps from t up to and including the newest written row)::

        returns  = Σ_{k=0}^{m-1} γ^k r_{t+k}
        discount = γ^m (1 - terminated_{t+m-1})

    so the target is ``returns + discount * V(last.next_obs)``, the same G^(n)_t as
    ``rlzoo.returns.n_step_returns`` over the env's stored steps in write order (the
    newest row playing the rollout's last step). The sum never crosses an episode
    end, never reads an unfilled slot and never wraps past the write position.

    See Sutton & Barto (2018), "Reinforcement Learning: An Introduction", 2nd ed.,
    eq. 7.1; Hessel et al. (2018), "Rainbow", https://arxiv.org/abs/1710.02298.

    Args:
        state: the buffer, whose transitions have ``reward``, ``terminated`` and
            ``truncated`` fields (see the module docstring).
        key: a PRNG key.
        batch_size: B, a static int >= 1.
        n: steps of the return, a static int >= 1 (at most ``capacity`` are used).
        gamma: discount γ (scalar, may be traced).
        prioritized, alpha, beta: as in ``sample``; priorities are the first step's.

    Returns:
        ``NStepSample(indices, first, last, returns, discount, weights)``.
    """
    _check_int(batch_size, "batch_size", 1)
    _check_int(n, "n", 1)
    check_scalar(gamma=gamma)
    capacity, _ = _sizes(state)
    reward, terminated, truncated = _episode_fields(state)
    indices, weights = _draw(state, key, batch_size, 1, prioritized, alpha, beta)
    rows, envs = indices
    steps_left = state.size - (rows - _oldest(state)) % capacity  # rows t..newest, >= 1
    horizon = min(n, capacity)
    window_rows = (rows[None, :] + jnp.arange(horizon)[:, None]) % capacity  # [n, B]: step k of each window
    window_terminated = terminated[window_rows, envs]
    done = (window_terminated != 0) | (truncated[window_rows, envs] != 0)
    ended_before = jnp.cumsum(done, axis=0) - done  # episode ends strictly before step k
    in_sum = (ended_before == 0) & (jnp.arange(horizon)[:, None] < steps_left)
    returns, discount, steps = n_step_window(reward[window_rows, envs], window_terminated, in_sum, gamma)

    first = _gather(state.data, rows, envs)
    last = _gather(state.data, (rows + steps - 1) % capacity, envs)
    return NStepSample(indices, first, last, returns, discount, weights)


def sample_sequences(state: ReplayState, key: Array, batch_size: int, length: int) -> SequenceSample:
    """Draws ``batch_size`` sequences of ``length`` consecutive steps of one env, uniformly.

    A sequence starts at any slot whose row and the ``length - 1`` rows after it
    are filled and in write order (it never wraps past the write position), so
    ``can_sample(state, batch_size, length)`` should hold. A sequence may span an
    episode end: ``mask[b, k]`` is True up to and including the first done step of
    the sequence and False after it.

    Args:
        state: the buffer, whose transitions have ``terminated`` and ``truncated``
            fields (see the module docstring).
        key: a PRNG key.
        batch_size: B, a static int >= 1.
        length: L, a static int >= 1.

    Returns:
        ``SequenceSample(indices, transitions, mask)``, transitions' leaves
        [B, L, ...], mask [B, L].
    """
    _check_int(batch_size, "batch_size", 1)
    _check_int(length, "length", 1)
    capacity, _ = _sizes(state)
    _, terminated, truncated = _episode_fields(state)
    indices, _ = _draw(state, key, batch_size, length, False, 0.0, 0.0)
    rows = (indices.rows[:, None] + jnp.arange(length)) % capacity
    envs = jnp.broadcast_to(indices.envs[:, None], rows.shape)
    done = ((terminated[rows, envs] != 0) | (truncated[rows, envs] != 0)).astype(jnp.int32)
    ended_before = jnp.cumsum(done, axis=1) - done  # done steps strictly before k
    return SequenceSample(indices, _gather(state.data, rows, envs), ended_before == 0)


def nbytes(state: ReplayState) -> int:
    """Bytes of the stored data plus the priorities.

    Works on a concrete state and on an abstract one, e.g.
    ``jax.eval_shape(lambda: init(example, capacity, num_envs))``, which sizes a
    buffer without allocating it.
    """
    leaves = jax.tree.leaves((state.data, state.priorities))
    return int(sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves))
