"""The parts of the algorithm-file contract that every algorithm shares.

An algorithm file defines a frozen `Config` (static: env, sizes, budgets; the CLI)
and an `HParams` pytree (traced, sweepable numbers with declared `BOUNDS`);
`make_train(config)` returns a `Trainer`, callable as `train(key, hparams)` and
also runnable as a sequence of jitted chunks of updates with the whole training
state between them (what checkpoints, resume and per-chunk logging build on).

This module holds that `Trainer`, the range type used in `HParams.BOUNDS`, and
the validation helpers whose errors name the field, the value and what is
allowed. It holds nothing algorithm-specific.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed values for a number, printed like `(0, inf)` or `[0, 1]`."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = True
    high_closed: bool = True

    def __contains__(self, value: float) -> bool:
        # An infinite end is open however it is declared (as printed): `--lr inf` is refused.
        above = value >= self.low if self.low_closed and math.isfinite(self.low) else value > self.low
        below = value <= self.high if self.high_closed and math.isfinite(self.high) else value < self.high
        return bool(above and below and not math.isnan(value))

    def __str__(self) -> str:
        left = "[" if self.low_closed and math.isfinite(self.low) else "("
        right = "]" if self.high_closed and math.isfinite(self.high) else ")"
        return f"{left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Range(0.0, math.inf, low_closed=False)
NON_NEGATIVE = Range(0.0, math.inf)
UNIT_INTERVAL = Range(0.0, 1.0)


class ConfigError(ValueError):
    """Bad input from the user: the message names the field, the value and what is allowed."""


def check(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raises a ValueError naming the field, the value given and what is allowed."""
    if not condition:
        raise ConfigError(f"{field}={value!r} is not allowed: {allowed}")


def check_rollout_sizes(config: Any) -> None:
    """The budget and rollout sizes of an on-policy `Config` (PPO, PQN): each count >= 1, the minibatches
    dividing the num_envs * num_steps batch, and at least one rollout in total_timesteps."""
    check(config.total_timesteps > 0, "total_timesteps", config.total_timesteps, "must be > 0")
    for name in ("num_envs", "num_steps", "num_epochs", "num_minibatches"):
        check(getattr(config, name) >= 1, name, getattr(config, name), "must be >= 1")
    batch = config.num_envs * config.num_steps
    check(batch % config.num_minibatches == 0, "num_minibatches", config.num_minibatches,
          f"must divide num_envs * num_steps = {batch}")
    check(config.total_timesteps >= batch, "total_timesteps", config.total_timesteps,
          f"must be at least one rollout, num_envs * num_steps = {batch}")


def check_scalar(**scalars: Any) -> None:
    """Raises a ValueError unless each value is a scalar (a float or a 0-d, possibly traced, array)."""
    import jax.numpy as jnp

    for name, value in scalars.items():
        if jnp.ndim(value) != 0:
            raise ValueError(f"`{name}` must be a scalar (Python float or 0-d array); got shape "
                             f"{jnp.shape(value)}. To sweep it, use jax.vmap over the call.")


def check_hparams(hparams: Any, label: str = "") -> None:
    """Checks every field of an HParams instance against its class's `BOUNDS`."""
    bounds: dict[str, Range] = getattr(type(hparams), "BOUNDS", {})
    for field in dataclasses.fields(hparams):
        value = getattr(hparams, field.name)
        if field.name in bounds and not isinstance(value, jax.core.Tracer):
            allowed = bounds[field.name]
            check(float(value) in allowed, f"{label}{field.name}", value, f"must lie in {allowed}")
    relations = getattr(hparams, "check_relations", None)  # checks between fields, e.g. T a multiple of D
    if relations is not None and not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(hparams)):
        relations(label)


MASK_AWARE_ALGORITHMS = ("ppo", "pqn")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, so `jax.jit(trainer)` works for any env
class Trainer:
    """What `make_train(config)` returns.

    `trainer(key, hparams)` runs all `num_updates` updates and returns
    `(final_state, metrics)`, where each metric has a leading axis of updates.
    `init` and `update` are the pieces: `run(state, hparams, n)` scans `update`
    n times, so a long run can be split into chunks with the state saved between.
    `act` and `eval_env` let the runner play evaluation episodes between chunks.

    `data` holds arrays that every member reads and none owns, such as an offline
    dataset. When it is set, `init` and `update` take it as a last argument and the
    runners (`run_members`, `members`, `rlzoo.runner`, `rlzoo.sweep`) hand it to
    `jax.jit` as an input, shared by all members. Closed over instead, it would be
    embedded in every compiled program as a constant: a 1M x 25 float32 dataset gave
    200 MB of HLO text and doubled the compile time (measured, jax 0.10).
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict[str, jax.Array]]]
    num_updates: int
    env_steps_per_update: int
    act: Callable[[Any, jax.Array, jax.Array, bool], jax.Array] | None = None
    """act(state, key, raw_obs, greedy) -> action, for evaluation episodes (None: no evaluation)."""
    eval_env: Any = None
    """A single `rlzoo.env_adapter.Env` to evaluate on (a separate copy from the training envs)."""
    data: Any = None
    """Arrays shared by all members, passed to `init` and `update` (see above); None for online RL."""
    act_carry: Callable[[int], Any] | None = None
    """Recurrent agents: the hidden state of n envs at an episode start; `act` then takes and returns it,
    act(state, key, raw_obs, greedy, carry) -> (action, carry) (`rlzoo.evaluate.evaluate_policy_of`)."""
    honours_action_mask: bool = False
    """The algorithm acts (and bootstraps) among legal actions only on envs with an action mask; `act` then takes
    `mask=` too. Envs with a mask are refused by the others (a masked action must never be taken)."""

    def __post_init__(self):
        spec = getattr(self.eval_env, "spec", None)
        if getattr(spec, "action_mask", False) and not self.honours_action_mask:
            raise ConfigError(f"env_id {spec.env_id!r} has an action mask, which this algorithm does not honour; "
                              f"allowed: an env without one, or an algorithm that honours masks "
                              f"({', '.join(MASK_AWARE_ALGORITHMS)})")

    def _with_data(self, fn: Callable, data: Any) -> Callable:
        """`fn` with the shared data bound as its last argument (`self.data`, closed over, if `data` is None)."""
        if self.data is None:
            return fn
        data = self.data if data is None else data
        return lambda *args: fn(*args, data)

    def run(self, state: Any, hparams: Any, num_updates: int, data: Any = None) -> tuple[Any, dict[str, jax.Array]]:
        update = self._with_data(self.update, data)
        return jax.lax.scan(lambda s, _: update(s, hparams), state, None, length=num_updates)

    def __call__(self, key: jax.Array, hparams: Any) -> tuple[Any, dict[str, jax.Array]]:
        return self.run(self._with_data(self.init, None)(key, hparams), hparams, self.num_updates)

    def init_members(self, keys: jax.Array, hparams: Any, data: Any = None) -> Any:
        """`init` for M members at once (leading axis M on keys and hparams; `data` is shared, not vmapped)."""
        return jax.vmap(self._with_data(self.init, data))(keys, hparams)

    def run_members(self, states: Any, hparams: Any, num_updates: int, data: Any = None,
                    shared: Any = None) -> tuple[Any, dict[str, jax.Array]]:
        """`run` for M members at once (leading axis M on states and hparams); metrics come out [M, n].

        Scans the vmapped update rather than vmapping `run`: the results are the same, but on XLA CPU
        vmap-of-scan ran DQN on Breakout-MinAtar (8 seeds, 10 MB replay each) 3.7x slower, as the
        replay writes were no longer done in place.

        `shared` (from `shared_counters`) marks state leaves that are equal in every member; they are
        carried once, unbatched, and broadcast back at the end. Carried per member instead, PPO's update
        counter alone made its CartPole program 35-40% slower on XLA CPU (jax 0.10.2, 1 seed).
        """
        shared = jax.tree.map(lambda _: False, states) if shared is None else shared
        axes = jax.tree.map(lambda is_shared: None if is_shared else 0, shared)
        update = jax.vmap(self._with_data(self.update, data), in_axes=(axes, 0), out_axes=(axes, 0))
        carry = jax.tree.map(lambda x, is_shared: x[0] if is_shared else x, states, shared)
        carry, metrics = jax.lax.scan(lambda s, _: update(s, hparams), carry, None, length=num_updates)
        members = jax.tree.leaves(states)[0].shape[0]
        states = jax.tree.map(lambda x, is_shared: jnp.broadcast_to(x, (members, *x.shape)) if is_shared else x,
                              carry, shared)
        return states, jax.tree.map(lambda m: jnp.swapaxes(m, 0, 1), metrics)

    def shared_counters(self, keys: jax.Array, hparams: Any, data: Any = None) -> Any:
        """Which state leaves every member provably shares: a pytree of bools shaped like the state.

        Candidates are integer scalars per member (update and step counters, optimizer counts). One is
        shared when `init` makes it independent of the key and hyperparameters, and `update` keeps it so
        given shared inputs: `jax.vmap` refuses an unbatched output (`out_axes=None`) that depends on a
        batched input, so both are proved by tracing, and the members' values stay equal by induction.
        """
        init, update = self._with_data(self.init, data), self._with_data(self.update, data)
        like = jax.eval_shape(self.init_members, keys, hparams, data)
        candidates = jax.tree.map(lambda x: x.ndim == 1 and jnp.issubdtype(x.dtype, jnp.integer), like)

        def provably_shared(chosen: Any) -> bool:
            axes = jax.tree.map(lambda c: None if c else 0, chosen)
            one = jax.tree.map(lambda x, c: jax.ShapeDtypeStruct(x.shape[1:], x.dtype) if c else x, like, chosen)
            try:
                jax.eval_shape(jax.vmap(init, out_axes=axes), keys, hparams)
                jax.eval_shape(jax.vmap(update, in_axes=(axes, 0), out_axes=(axes, 0)), one, hparams)
            except ValueError:
                return False
            return True

        if not any(jax.tree.leaves(candidates)) or provably_shared(candidates):
            return candidates
        leaves, treedef = jax.tree.flatten(candidates)
        alone = [c and provably_shared(treedef.unflatten([j == i for j in range(len(leaves))]))
                 for i, c in enumerate(leaves)]
        return treedef.unflatten(alone)  # each shared alone is shared together: fewer batched inputs only help

    def members(self, keys: jax.Array, hparams: Any, data: Any = None) -> tuple[Any, dict[str, jax.Array]]:
        """`jax.vmap(trainer)(keys, hparams)`, computed as `run_members` (see there)."""
        return self.run_members(self.init_members(keys, hparams, data), hparams, self.num_updates, data,
                                self.shared_counters(keys, hparams, data))
