"""What a run will hold in memory, checked before anything is allocated, compiled or written.

`check_run_fits(trainer, keys, member_hparams, eval_episodes)` works out, from shapes
alone (`jax.eval_shape`, nothing allocated), the bytes of the whole training state
of every member (replay buffers, env states, parameters, optimiser states) and of
the evaluation envs, and refuses a run whose state alone exceeds the memory this
process can have: the CPU's available memory (and the container's limit), or the
accelerator's. The error names the Config field that sizes the largest part
(`buffer_size` for a replay buffer, `num_envs` for env states, `eval_episodes`
for evaluation) and the value that would fit. It is a floor, not a forecast:
XLA's temporaries come on top, so a run that passes can still run out of memory,
but a run that fails could never have started.

Not here: the sizes' own checks (each Config's `__post_init__`), the run harness (`rlzoo.runner`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from rlzoo.trainer import ConfigError, Trainer


class Part(NamedTuple):
    name: str  # pytree path, e.g. "buffer/obs"
    bytes: int


def leaf_bytes(leaf: Any) -> int:
    """Bytes of one array (or ShapeDtypeStruct); a typed PRNG key counts its key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize


def parts_of(tree: Any) -> list[Part]:
    """Each leaf's pytree path and bytes, largest first."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    parts = [Part(jax.tree_util.keystr(path, simple=True, separator="/"), leaf_bytes(leaf)) for path, leaf in leaves]
    return sorted(parts, key=lambda part: -part.bytes)


def available_bytes(num_devices: int = 1) -> int | None:
    """Memory this process can still take: on accelerators, that of the `num_devices` local devices the members
    are sharded over; on CPU, the host's (however many CPU devices share it). None if unknown."""
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        stats = [device.memory_stats() or {} for device in devices[:num_devices]]
        if all("bytes_limit" in s for s in stats):
            return sum(int(s["bytes_limit"]) - int(s.get("bytes_in_use", 0)) for s in stats)
        return None
    limits = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        limits.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    try:  # a container's cgroup (v2) limit, when set
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            limits.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not limits and hasattr(os, "sysconf"):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(limits) if limits else None


def field_sizing(part_name: str) -> str:
    """The Config field that sizes a part of the training state, from its pytree path."""
    lowered = part_name.lower()
    if "buffer" in lowered or "replay" in lowered:
        return "buffer_size"
    if "env" in lowered or "obs" in lowered:
        return "num_envs"
    return "num_seeds (or the --sweep grid)"


def human(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes < 1000 or unit == "TB":
            return f"{num_bytes:,.0f} {unit}" if unit == "B" else f"{num_bytes:,.1f} {unit}"
        num_bytes /= 1000
    raise AssertionError("unreachable")


def check_run_fits(trainer: Trainer, keys: jax.Array, member_hparams: Any, eval_episodes: int,
                   num_devices: int = 1, values: dict[str, Any] | None = None,
                   available: int | None = None) -> None:
    """Raises ConfigError when the members' training state, or the evaluation envs, cannot fit in memory.

    `num_devices`: the devices the members are sharded over. `values`: the run's Config values, to name the
    field's value in the message. `available`: instead of measuring it (tests).
    """
    available = available_bytes(num_devices) if available is None else available
    if available is None:
        return
    values = values or {}
    members = int(keys.shape[0])
    state = jax.eval_shape(trainer.init_members, keys, member_hparams, trainer.data)
    parts = parts_of(state)
    total = sum(part.bytes for part in parts)
    if total > available:
        by_field: dict[str, int] = {}
        for part in parts:
            by_field[field_sizing(part.name)] = by_field.get(field_sizing(part.name), 0) + part.bytes
        field, field_bytes = max(by_field.items(), key=lambda item: item[1])
        name = field.split()[0]
        value = values.get(name)
        rest = total - field_bytes
        fitting = (f"; allowed: {name} <= {int(value * (available - rest) / field_bytes * 0.9):,} on this machine"
                   if isinstance(value, int) and available > rest * 1.2 else "")
        subject = (f"{name}={value!r} is not allowed here" if value is not None else
                   f"{members} member(s) (num_seeds x the --sweep grid) do not fit here")
        raise ConfigError(
            f"{subject}: the training state of {members} member(s) needs "
            f"{human(total)}, more than the {human(available)} of memory available; {human(field_bytes)} of it "
            f"is sized by {field} (largest part: {parts[0].name}, {human(parts[0].bytes)}){fitting}")
    if eval_episodes > 0 and trainer.act is not None and trainer.eval_env is not None:
        per_episode = sum(part.bytes for part in parts_of(jax.eval_shape(trainer.eval_env.reset, keys[0])))
        needed = per_episode * eval_episodes * members
        if needed > available - total:
            fits = max(0, int((available - total) / max(per_episode * members, 1) * 0.9))
            raise ConfigError(
                f"eval_episodes={eval_episodes!r} is not allowed here: evaluation plays them all at once, "
                f"{eval_episodes:,} envs x {members} member(s) x {human(per_episode)} = {human(needed)}, more than "
                f"the {human(max(available - total, 0))} left beside the training state; allowed: eval_episodes <= "
                f"{fits:,}")
