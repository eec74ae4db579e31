"""The moving window of K online networks and their frozen targets, shared by i-QN and i-SAC.

Iterated Q-Network (Vincent et al., TMLR 2025, arXiv 2403.02107) learns K
consecutive Bellman iterations at once: online networks Q_1..Q_K regress on the
Bellman targets of frozen networks Q_bar_0..Q_bar_{K-1}, Q_k on Q_bar_{k-1}. Two
periodic moves keep the window going, counted in steps:

- every D steps (`target_period`), *follow*: Q_bar_k <- Q_k for k = 1..K-1;
- every T steps (`roll_period`, a multiple of D), *roll*: Q_bar_0 <- Q_1 (or a
  Polyak step toward it with `tau` < 1), and Q_k <- Q_{k+1}, the last network
  keeping its weights.

Here the K networks' parameters are stacked on a leading axis. Adam's moments stay
with their slot when the window rolls. Not here: the losses (each algorithm's
file), or i-QN's shared-torso layout (in `algorithms/iqn.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rlzoo.updates import polyak, tree_select


def stack(tree: Any, num: int) -> Any:
    """`num` copies of every leaf on a new leading axis (all K networks start from one initialisation)."""
    return jax.tree.map(lambda x: jnp.repeat(x[None], num, axis=0), tree)


def shift(x: jax.Array, axis: int = 0) -> jax.Array:
    """Q_k <- Q_{k+1} along `axis`; the last keeps its weights."""
    x = jnp.moveaxis(x, axis, 0)
    return jnp.moveaxis(jnp.concatenate([x[1:], x[-1:]]), 0, axis)


def follow(target_params: Any, params: Any) -> Any:
    """Q_bar_k <- Q_k for k = 1..K-1 (stacked parameters)."""
    return jax.tree.map(lambda t, p: t.at[1:].set(p[:-1]), target_params, params)


def roll(target_params: Any, params: Any, tau: Any = None) -> tuple[Any, Any]:
    """Q_bar_0 <- Q_1 (or (1 - tau) Q_bar_0 + tau Q_1), then Q_k <- Q_{k+1}: returns (target_params, params)."""
    targets = jax.tree.map(lambda t, p: t.at[0].set(p[0] if tau is None else polyak(t[0], p[0], tau)),
                           target_params, params)
    return targets, jax.tree.map(shift, params)


def advance(target_params: Any, params: Any, rolling: jax.Array, following: jax.Array,
            roll_fn: Callable[[Any, Any], tuple[Any, Any]],
            follow_fn: Callable[[Any, Any], Any] = follow) -> tuple[Any, Any]:
    """The window after this step's moves: roll where `rolling`, then follow where `following`."""
    rolled_targets, rolled_params = roll_fn(target_params, params)
    target_params = tree_select(rolling, rolled_targets, target_params)
    params = tree_select(rolling, rolled_params, params)
    return tree_select(following, follow_fn(target_params, params), target_params), params
