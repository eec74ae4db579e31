"""Orbax checkpoints of the whole training state, one per chunk of updates.

The state is any pytree of arrays (params, optimiser state, RNG keys, env
states, normaliser statistics, counters); the step number is the count of
updates done. Saving goes through `CheckpointManager` with the `args=` API and
is atomic (orbax writes to a temporary folder and renames it).

Not here: deciding when to save (see `rlzoo.experiment`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


def checkpoint_manager(directory: str | Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    manager.save(step, args=ocp.args.StandardSave(state))


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> tuple[int, Any]:
    """Restores the newest checkpoint into the structure, shapes and shardings of `like`."""
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {manager.directory}")
    return step, manager.restore(step, args=ocp.args.StandardRestore(like))
