"""One sweep, several hosts: the `rlzoo.sweep` member axis split over every device of a multi-process JAX job.

`rlzoo.sweep.run_sweep` shards the C * S sweep members over the *local* devices
of one process. This module runs the same members, laid out the same way
(configuration-major, shared seed keys), over *all* devices of a job started
with `jax.distributed.initialize`: one process per host, each process owning
its local devices. The members are one `vmap` axis on a global 1-D mesh named
"members"; each process computes only the members on its own devices, and
gets back exactly those members as host numpy arrays, with their indices, to
write out itself. Members never talk to each other, so the compiled program
needs no cross-host collectives; only the optional `gather=True` does.

Launch: run the same command on every host, changing only the process id.

    # host 0 (its address is the coordinator's), then host 1, ...
    python my_sweep.py --coordinator 10.0.0.1:12345 --num-processes 2 --process-id 0
    python my_sweep.py --coordinator 10.0.0.1:12345 --num-processes 2 --process-id 1

where my_sweep.py does, before anything else touches JAX:

    import rlzoo  # sets rlzoo's XLA CPU flag before JAX starts
    from rlzoo.distributed import initialize, run_sweep_multihost
    initialize(args.coordinator, args.num_processes, args.process_id)
    labels, members, (state, metrics) = run_sweep_multihost(
        make_train(Config()), HParams(), {"lr": [1e-4, 3e-4]}, seed=0, num_seeds=4)
    np.savez(f"part{jax.process_index()}.npz", members=members, **metrics)

Instead of arguments, `initialize()` reads JAX_COORDINATOR_ADDRESS,
RLZOO_NUM_PROCESSES and RLZOO_PROCESS_ID, and with none of those it falls back to
JAX's own cluster detection (Slurm, Open MPI, Cloud TPU, Kubernetes).
See docs/multihost.md.

Not for: splitting one training run over hosts (a member's whole training runs
on one device), elastic or fault-tolerant jobs (if one process dies the job
stops), run folders, logging or checkpoints (see `rlzoo.runner`; each
process writes its own members), or a single host (use `rlzoo.sweep.run_sweep`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from rlzoo.trainer import ConfigError, Trainer
from rlzoo.sweep import MEMBER_AXIS, expand_members, make_grid, seed_keys


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: int | Sequence[int] | None = None,
               coordinator_bind_address: str | None = None, initialization_timeout: int = 300) -> None:
    """Joins this process to a multi-process JAX job: `jax.distributed.initialize`, called the rlzoo way.

    Call it once per process, before any JAX computation (even `jax.devices()`),
    with the same `coordinator_address` ("host:port" of process 0, reachable from
    every host) and `num_processes` everywhere and `process_id` 0..num_processes-1.
    Arguments left as None are read from JAX_COORDINATOR_ADDRESS,
    RLZOO_NUM_PROCESSES and RLZOO_PROCESS_ID; if still unset, JAX detects them on
    Slurm, Open MPI, Cloud TPU or Kubernetes.

    `coordinator_bind_address` is where process 0's coordinator listens; JAX's
    default is every interface ("[::]:port"); "127.0.0.1:port" keeps a
    single-machine job on loopback. On CPU, JAX 0.10 uses gloo over TCP for
    cross-process collectives by default (`jax_cpu_collectives_implementation`);
    `run_sweep_multihost` does not need any, only its `gather=True` does.
    """
    if num_processes is None and os.environ.get("RLZOO_NUM_PROCESSES"):
        num_processes = int(os.environ["RLZOO_NUM_PROCESSES"])
    if process_id is None and os.environ.get("RLZOO_PROCESS_ID"):
        process_id = int(os.environ["RLZOO_PROCESS_ID"])
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"num_processes={num_processes!r} is not allowed: must be >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"process_id={process_id!r} is not allowed: must lie in [0, {num_processes - 1}] "
                          f"for num_processes={num_processes}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids,
                               coordinator_bind_address=coordinator_bind_address,
                               initialization_timeout=initialization_timeout)


def check_member_split(num_configs: int, num_seeds: int, num_devices: int, num_processes: int = 1) -> int:
    """Members per device; a ConfigError unless C * S members divide evenly over the devices."""
    if num_seeds < 1:
        raise ConfigError(f"num_seeds={num_seeds!r} is not allowed: must be >= 1")
    num_members = num_configs * num_seeds
    if num_members % num_devices:
        raise ConfigError(
            f"num_seeds={num_seeds!r} is not allowed here: {num_configs} configuration(s) x {num_seeds} seed(s) = "
            f"{num_members} members do not split evenly over the {num_devices} devices of this job "
            f"({num_processes} process(es)); the member count must be a multiple of {num_devices}, "
            f"e.g. choose num_seeds so that {num_configs} * num_seeds is")
    return num_members // num_devices


class MultihostSweep(NamedTuple):
    labels: list[str]  # one per configuration, as in rlzoo.sweep
    member_indices: np.ndarray  # int [m]: the global members held here (member = config * num_seeds + seed)
    outputs: Any  # whatever train returns, as host numpy arrays with leading axis [m], in member_indices order


def run_sweep_multihost(train: Callable, base_hparams: Any, values: dict[str, list[float]], seed: int = 0,
                        num_seeds: int = 1, *, gather: bool = False) -> MultihostSweep:
    """Runs `train(key, hparams)` for every configuration x seed over all devices of all processes.

    Every process must call it with the same arguments (it is one SPMD program).
    Members are those of `rlzoo.sweep.run_sweep` in the same order; the M = C * S
    members are split evenly over `jax.devices()` (M must be a multiple of the
    global device count). Returns `(labels, member_indices, outputs)`: this
    process's members and their outputs as host numpy arrays. With
    `gather=True` every process gets all M members (indices 0..M-1) through a
    cross-process all-gather, which needs working collectives on the backend.
    """
    grid = make_grid(base_hparams, values)
    num_configs = len(grid.labels)
    devices = jax.devices()
    check_member_split(num_configs, num_seeds, len(devices), jax.process_count())
    # Every process builds the whole (small) member list on its host and hands each
    # of its devices that device's slice: no data crosses hosts.
    keys, hparams = jax.device_get(expand_members(seed_keys(seed, num_seeds), grid.hparams))
    mesh = jax.make_mesh((len(devices),), (MEMBER_AXIS,), devices=devices, axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))

    def to_global(host: np.ndarray) -> jax.Array:
        host = np.asarray(host)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    keys, hparams = jax.tree.map(to_global, (keys, hparams))
    if isinstance(train, Trainer):
        outputs = jax.jit(train.members, out_shardings=sharding)(keys, hparams, train.data)
    else:
        outputs = jax.jit(jax.vmap(train), out_shardings=sharding)(keys, hparams)

    if gather:
        from jax.experimental import multihost_utils
        gathered = multihost_utils.process_allgather(outputs, tiled=True)
        return MultihostSweep(grid.labels, np.arange(keys.shape[0]), jax.tree.map(np.asarray, gathered))
    member_indices = local_member_indices(jax.tree.leaves(outputs)[0])
    return MultihostSweep(grid.labels, member_indices, jax.tree.map(local_rows, outputs))


def _local_shards(x: jax.Array) -> list:
    """This process's shards of a member-sharded array, one per member block, in member order."""
    blocks = {}
    for shard in x.addressable_shards:
        start, stop, _ = shard.index[0].indices(x.shape[0])
        blocks.setdefault(start, (stop, shard))  # replicas of one block (if any) are equal
    return [(start, *blocks[start]) for start in sorted(blocks)]


def local_member_indices(x: jax.Array) -> np.ndarray:
    """The global member indices of the rows of `x` that live on this process, ascending."""
    return np.concatenate([np.arange(start, stop) for start, stop, _ in _local_shards(x)]).astype(np.int64)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a member-sharded array as one host array, in `local_member_indices` order."""
    return np.concatenate([np.asarray(shard.data) for _, _, shard in _local_shards(x)], axis=0)
