"""Orbax checkpoints of the whole training state, one per chunk of updates.

The state is any pytree of arrays (params, optimiser state, RNG keys, env
states, normaliser statistics, replay buffers, counters); the step number is the
count of updates done. Each checkpoint also stores, as JSON, what it was written
under (algorithm, config, hyperparameters, sweep, seeds), so a checkpoint is
never restored into a run it does not belong to. Saving goes through
`CheckpointManager` with the `args=` API and is atomic: orbax writes to a
temporary folder and renames it when complete, so a run killed mid-save leaves
the previous checkpoints intact. A checkpoint that cannot be read (truncated or
corrupted files) is moved aside to `corrupt-<step>` and the one before it is used.
Zero-size arrays, which orbax cannot save, are saved as scalars and put back on restore.

Not here: deciding when to save (see `rlzoo.runner`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rlzoo.trainer import ConfigError


class CheckpointError(RuntimeError):
    """No checkpoint in a run folder could be restored."""


def checkpoint_manager(directory: str | Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def best_manager(directory: str | Path) -> ocp.CheckpointManager:
    """Keeps the one checkpoint with the highest evaluation return."""
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_mode="max",
                                           best_fn=lambda metrics: metrics["eval_return"])
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _is_empty(leaf: Any) -> bool:
    return getattr(leaf, "size", 1) == 0


def without_empty_arrays(state: Any) -> Any:
    """`state` with each zero-size array (e.g. MJX's actuator activations of a model without any) replaced by
    a scalar of its dtype: orbax cannot save zero-size arrays, and their value is known from their shape."""
    leaves, treedef = jax.tree.flatten(state)
    return treedef.unflatten([np.zeros((), leaf.dtype) if _is_empty(leaf) else leaf for leaf in leaves])


def with_empty_arrays(restored: Any, like: Any) -> Any:
    """Puts back the zero-size arrays of `like` where `without_empty_arrays` put scalars in `restored`."""
    like_leaves, treedef = jax.tree.flatten(like)
    restored_leaves = treedef.flatten_up_to(restored)
    return treedef.unflatten([old if _is_empty(old) else new for old, new in zip(like_leaves, restored_leaves)])


def save(manager: ocp.CheckpointManager, step: int, state: Any, written_under: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
    state = without_empty_arrays(state)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               written_under=ocp.args.JsonSave(written_under)), metrics=metrics)


def best_metric(manager: ocp.CheckpointManager, name: str) -> float | None:
    """The metric `name` of the best checkpoint a best-mode manager holds (None if it holds none)."""
    step = manager.best_step()
    if step is None:
        return None
    metrics = manager.metrics(step)
    return None if metrics is None else float(metrics[name])


def differing_fields(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, e.g. `config.env_id: 'A' != 'B'`."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [d for key in sorted(set(saved) | set(current))
                for d in differing_fields(saved.get(key), current.get(key), f"{prefix}{key}.")]
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        saved, current = list(saved), list(current)
    return [] if saved == current else [f"{prefix.rstrip('.')}: checkpoint has {saved!r}, this run has {current!r}"]


def is_event_loop_noise(unraisable: Any) -> bool:
    """What tensorstore reports when reads of a damaged checkpoint complete after orbax's event loop closed: one
    unraisable `RuntimeError('Event loop is closed')` per pending read, from its own threads, shortly after the
    failed restore (without a hook, one traceback each on stderr)."""
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


@contextlib.contextmanager
def without_event_loop_noise(settle: Callable[[], bool]) -> Iterator[None]:
    """Drops `is_event_loop_noise` meanwhile (other unraisable errors go to the previous hook). When `settle()`
    is true at the end (a restore failed), first waits until the late ones have stopped (0.2 s without one, at
    most 2 s)."""
    previous, last_seen = sys.unraisablehook, [time.monotonic()]

    def hook(unraisable: Any) -> None:
        if is_event_loop_noise(unraisable):
            last_seen[0] = time.monotonic()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        deadline = time.monotonic() + 2.0
        while settle() and time.monotonic() < deadline and time.monotonic() - last_seen[0] < 0.2:
            time.sleep(0.05)
        sys.unraisablehook = previous


def restore_latest(manager: ocp.CheckpointManager, like: Any, written_under: dict[str, Any]) -> tuple[int, Any]:
    """Restores the newest readable checkpoint into the structure, shapes and shardings of `like`.

    Raises ConfigError naming the differing fields if the checkpoint was written
    under another configuration, and CheckpointError if none can be read. Each
    unreadable checkpoint is set aside with one line on stderr (no tracebacks).
    """
    set_aside: list[str] = []
    try:
        with without_event_loop_noise(settle=lambda: bool(set_aside)):
            return _restore_newest_readable(manager, like, written_under, set_aside)
    finally:
        for note in set_aside:
            print(note, file=sys.stderr)


def _restore_newest_readable(manager: ocp.CheckpointManager, like: Any, written_under: dict[str, Any],
                             set_aside: list[str]) -> tuple[int, Any]:
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            saved = manager.restore(step, args=ocp.args.Composite(written_under=ocp.args.JsonRestore()))
            differences = differing_fields(saved.written_under, written_under)
        except Exception as error:  # noqa: BLE001 - any unreadable metadata means a damaged checkpoint
            set_aside.append(_set_aside(manager, step, error))
            continue
        if differences:
            raise ConfigError(f"checkpoint {step} in {manager.directory} was written under a different "
                              f"configuration: {'; '.join(differences)}")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(without_empty_arrays(like))))
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise several types for bad files
            set_aside.append(_set_aside(manager, step, error))
            continue
        return step, with_empty_arrays(restored.state, like)
    raise CheckpointError(f"no readable checkpoint in {manager.directory}")


def _set_aside(manager: ocp.CheckpointManager, step: int, error: Exception) -> str:
    """Moves an unreadable checkpoint to corrupt-<step> (corrupt-<step>-2, ... if set aside before); says so."""
    directory = Path(manager.directory)
    target = directory / f"corrupt-{step}"
    copies = 1
    while target.exists():  # the same step corrupted again after a resume rewrote it
        copies += 1
        target = directory / f"corrupt-{step}-{copies}"
    (directory / str(step)).rename(target)
    manager.reload()
    reason = str(error).splitlines()[0][:200]
    return (f"error: checkpoint {step} cannot be read ({type(error).__name__}: {reason}); moved it to {target} "
            f"and trying the one before it")
