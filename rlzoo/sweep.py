"""Seeds x hyperparameter grids as one compiled program, sharded over devices.

A sweep has C configurations (the cartesian product of the swept `HParams`
fields) and S seeds, so M = C * S *members*, laid out configuration-major:
member m is configuration m // S with seed m % S. Every configuration uses the
same S seed keys (common random numbers), so member (c, s) equals a separate run
of `train(seed_keys[s], hparams_c)`. Members are one `vmap` axis, sharded over all
local devices with `jax.sharding` (a 1-D mesh named "members"); no `pmap`.

From Python:

    result = run_sweep(make_train(Config()), HParams(), {"lr": [1e-4, 3e-4]}, seed=0, num_seeds=4)
    result.outputs                  # (final_state, metrics), leading member axis [C*S]
    result.per_config(result.outputs[1])  # metrics as host arrays [C, S, updates]

From the CLI: `--num-seeds 4 --sweep lr=1e-4,3e-4,1e-3 gamma=0.98,0.99`.

Not here: the run folder, logging or checkpoints (see `rlzoo.runner`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from rlzoo.trainer import ConfigError, Trainer, check_hparams

MEMBER_AXIS = "members"


def parse_sweep(specs: Sequence[str], hparams_cls: type, config_cls: type | None = None) -> dict[str, list[float]]:
    """Parses `["lr=1e-4,3e-4", "gamma=0.99"]` into `{"lr": [1e-4, 3e-4], "gamma": [0.99]}`.

    Only `HParams` fields can be swept: a `Config` field changes shapes or the
    compiled program, so it would need one compile per value.
    """
    sweepable = [f.name for f in dataclasses.fields(hparams_cls)]
    static = [f.name for f in dataclasses.fields(config_cls)] if config_cls else []
    grid: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not raw.strip():
            raise ConfigError(f"sweep entry {spec!r} is malformed: write name=v1,v2,... e.g. lr=1e-4,3e-4")
        if name in static:
            raise ConfigError(f"sweep over {name!r} is not allowed: it is a static Config field (it fixes shapes "
                             f"or the compiled program); sweepable HParams fields are: {', '.join(sweepable)}")
        if name not in sweepable:
            raise ConfigError(f"sweep over {name!r} is not allowed: unknown field; sweepable HParams fields are: "
                             f"{', '.join(sweepable)}")
        if name in grid:
            raise ConfigError(f"sweep names {name!r} twice; give all its values in one entry")
        try:
            grid[name] = [float(v) for v in raw.split(",")]
        except ValueError:
            raise ConfigError(f"sweep values for {name!r} must be numbers separated by commas, got {raw!r}") from None
    return grid


class Grid(NamedTuple):
    labels: list[str]  # one per configuration, e.g. "lr=0.0001,gamma=0.99" ("default" if nothing is swept)
    hparams: Any  # HParams whose every field is a float32 array [C]


def check_distinct_configurations(values: dict[str, list[float]], labels: list[str]) -> None:
    """Refuses a sweep whose values collide: equal as float32 (what the program sees) or printed alike (its
    label in metrics.csv), which would train the same configuration twice or write two under one label."""
    for name, raw in values.items():
        seen: dict[Any, float] = {}
        for value in raw:
            key = (np.float32(value).item(), f"{value:g}")
            for other_key, other in seen.items():
                if key[0] == other_key[0] or key[1] == other_key[1]:
                    raise ConfigError(f"sweep values of {name!r} collide: {other!r} and {value!r} are the same as "
                                      f"float32 or as printed ({key[1]!r}, 6 significant digits); allowed: values "
                                      f"that differ in float32 and in their first 6 significant digits")
            seen[key] = value
    if len(set(labels)) != len(labels):  # a last guard: labels are the metrics' keys
        raise ConfigError(f"sweep configurations share labels: {sorted(set(l for l in labels if labels.count(l) > 1))}")


def make_grid(base: Any, values: dict[str, list[float]]) -> Grid:
    """The cartesian product of `values` over `base`, validated against `HParams.BOUNDS`."""
    names = list(values)
    configs = [dict(zip(names, combo)) for combo in itertools.product(*(values[n] for n in names))] or [{}]
    members = []
    labels = []
    for overrides in configs:
        label = ",".join(f"{k}={v:g}" for k, v in overrides.items()) or "default"
        hp = dataclasses.replace(base, **overrides)
        check_hparams(hp, label=f"sweep configuration {label}: " if overrides else "")
        members.append(hp)
        labels.append(label)
    check_distinct_configurations(values, labels)
    stacked = jax.tree.map(lambda *xs: jnp.asarray(xs, jnp.float32), *members)
    return Grid(labels, stacked)


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """The S seed keys every configuration shares."""
    return jax.random.split(jax.random.PRNGKey(seed), num_seeds)


def expand_members(keys: jax.Array, grid_hparams: Any) -> tuple[jax.Array, Any]:
    """[S] keys and [C] hparams -> [C*S] keys and hparams, configuration-major."""
    num_seeds = keys.shape[0]
    num_configs = jax.tree.leaves(grid_hparams)[0].shape[0]
    member_keys = jnp.tile(keys, (num_configs, 1))
    member_hparams = jax.tree.map(lambda x: jnp.repeat(x, num_seeds, axis=0), grid_hparams)
    return member_keys, member_hparams


def member_sharding(num_members: int) -> NamedSharding | None:
    """Shards the member axis over as many local devices as divide it evenly (None for one)."""
    devices = jax.local_devices()
    used = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    if used == 1:
        return None
    mesh = jax.make_mesh((used,), (MEMBER_AXIS,), devices=devices[:used], axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))


def shard_members(tree: Any, sharding: NamedSharding | None) -> Any:
    """Places each leaf's leading (member) axis across devices."""
    return tree if sharding is None else jax.device_put(tree, sharding)


class SweepResult(NamedTuple):
    labels: list[str]  # one per configuration
    num_seeds: int
    outputs: Any  # whatever train returns, with a leading member axis [C*S], sharded over devices

    def per_config(self, tree: Any = None) -> Any:
        """`tree` (default: all outputs) on the host with leading axes [C, S]."""
        tree = self.outputs if tree is None else tree
        return jax.tree.map(lambda x: split_members(np.asarray(jax.device_get(x)), len(self.labels)), tree)


def run_sweep(train: Callable, base: Any, values: dict[str, list[float]], seed: int = 0,
              num_seeds: int = 1) -> SweepResult:
    """Runs `train(key, hparams)` for every configuration x seed in one compiled program."""
    if num_seeds < 1:
        raise ConfigError(f"num_seeds={num_seeds!r} is not allowed: must be >= 1")
    grid = make_grid(base, values)
    keys, hparams = expand_members(seed_keys(seed, num_seeds), grid.hparams)
    sharding = member_sharding(keys.shape[0])
    keys, hparams = shard_members((keys, hparams), sharding)

    def sweep_members(member_keys, member_hparams, data):
        if isinstance(train, Trainer):
            outputs = train.members(member_keys, member_hparams, data)
        else:
            outputs = jax.vmap(train)(member_keys, member_hparams)
        return outputs if sharding is None else jax.lax.with_sharding_constraint(outputs, sharding)

    data = train.data if isinstance(train, Trainer) else None  # a jit input, not a constant (see Trainer)
    return SweepResult(grid.labels, num_seeds, jax.jit(sweep_members)(keys, hparams, data))


def split_members(values: np.ndarray, num_configs: int) -> np.ndarray:
    """[M, ...] -> [C, S, ...] for per-member host arrays."""
    return values.reshape(num_configs, values.shape[0] // num_configs, *values.shape[1:])
