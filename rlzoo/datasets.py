"""Offline RL datasets: one `Dataset` of device arrays, read from rlzoo, D4RL or Minari HDF5 files.

A dataset is a flat table of N transitions with the D4RL keys:

    observations       [N, *obs_shape]  float32
    actions            [N, *action_shape] float32 (int32 for discrete actions)
    rewards            [N]              float32
    next_observations  [N, *obs_shape]  float32 (the true next observation, also at episode ends)
    terminals          [N]              bool: the episode ended in a terminal state (do not bootstrap)
    timeouts           [N]              bool: the episode was cut here (time limit or end of a recording)

`load(path)` reads three layouts, all with h5py in read-only mode (never pickle:
object and string arrays are refused):

- **rlzoo** files, written by `save` (and `python -m rlzoo.experiments.offline_datasets`): the six
  keys at the root and a JSON string attribute `rlzoo_metadata` holding `env_id`,
  `backend`, `tier`, `policy_return`, `ref_min_score` (random return),
  `ref_max_score` (expert return), `seed`, `rlzoo_version`, `num_transitions` and
  `checksum` (`sha256:` of the arrays, see `checksum`), which is verified on load.
- **D4RL** files: `observations, actions, rewards, terminals` at the root, plus
  `timeouts` and `next_observations` when present. Without `next_observations`,
  next observations are the following row's observation, as in
  `d4rl.qlearning_dataset`: rows that end in a timeout, and the last row, are
  dropped. `metadata` (groups/attributes) is not read; give the env and reference
  scores yourself.
- **Minari** datasets (hdf5 backend): a dataset folder holding
  `data/main_data.hdf5`, or a dataset id such as `mujoco/hopper/medium-v0`
  looked up under `$MINARI_DATASETS_PATH` (default `~/.minari/datasets`). Each
  group `episode_<i>` holds `observations [T+1, ...]`, `actions [T, ...]`,
  `rewards [T]`, `terminations [T]` and `truncations [T]`; only array (Box or
  Discrete) observations and actions are supported, not dict or tuple spaces.
  `minari` itself is not imported. The env id is read from `data/metadata.json`
  (`env_spec`) or the file's `env_spec` attribute when present.

Anything malformed (unreadable or truncated HDF5, a missing key, arrays of
different lengths, a wrong dtype, NaN or infinite values, a checksum mismatch)
raises `DatasetError` naming the file and the key. The source file is never
modified.

Also here: `normalized_score` (D4RL's 100 * (return - random) / (expert -
random)), `sample` (uniform minibatches, jittable) and observation
normalisation. Not here: generating datasets (`rlzoo.experiments.offline_datasets`) or training
on them (`rlzoo.offline`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.trainer import ConfigError

KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
METADATA_ATTR = "rlzoo_metadata"
MINARI_FILE = Path("data") / "main_data.hdf5"


class DatasetError(ConfigError):
    """A dataset file that cannot be used: the message names the file and the key."""


class Dataset(NamedTuple):
    """N transitions as device arrays with a leading axis [N] (see the module docstring)."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    terminals: jax.Array
    timeouts: jax.Array

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])


class ObsStats(NamedTuple):
    """Per-feature mean and standard deviation of the observations."""

    mean: jax.Array
    std: jax.Array

    def normalize(self, obs: jax.Array) -> jax.Array:
        return (obs - self.mean) / self.std


# --------------------------------------------------------------------------- checks


_ALLOWED_KINDS = {
    "observations": "fiu", "next_observations": "fiu", "actions": "fiu",
    "rewards": "fiu", "terminals": "biuf", "timeouts": "biuf",
}


def _check_array(path: Path, key: str, array: np.ndarray) -> None:
    """Refuses object/string/complex dtypes, non-finite floats and flags other than 0/1."""
    kind = array.dtype.kind
    if kind not in _ALLOWED_KINDS[key]:
        raise DatasetError(f"{path}: key {key!r} has dtype {array.dtype}, which is not allowed "
                           f"(expected {'bool or ' if 'b' in _ALLOWED_KINDS[key] else ''}numbers)")
    if kind == "f" and not np.isfinite(array).all():
        bad = int(np.flatnonzero((~np.isfinite(array.reshape(array.shape[0], -1))).any(axis=1))[0])
        raise DatasetError(f"{path}: key {key!r} holds NaN or infinite values (first at row {bad})")
    if key in ("terminals", "timeouts") and kind != "b" and not np.isin(array, (0, 1)).all():
        raise DatasetError(f"{path}: key {key!r} must hold 0/1 flags; found other values")


def _check_lengths(path: Path, arrays: dict[str, np.ndarray]) -> None:
    n = arrays["rewards"].shape[0] if arrays["rewards"].ndim else -1
    for key, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != n:
            raise DatasetError(f"{path}: key {key!r} has {array.shape[0] if array.ndim else 0} rows but "
                               f"'rewards' has {n}; every key needs one row per transition")
    for key in ("rewards", "terminals", "timeouts"):
        if arrays[key].ndim != 1:
            raise DatasetError(f"{path}: key {key!r} has shape {arrays[key].shape}; expected [N]")
    if arrays["observations"].shape != arrays["next_observations"].shape:
        raise DatasetError(f"{path}: key 'next_observations' has shape {arrays['next_observations'].shape} but "
                           f"'observations' has {arrays['observations'].shape}")


def checksum(arrays: Any) -> str:
    """sha256 over each key's name, dtype, shape and little-endian bytes, in `KEYS` order."""
    digest = hashlib.sha256()
    for key in KEYS:
        array = np.ascontiguousarray(np.asarray(_get(arrays, key)))
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def _get(arrays: Any, key: str) -> Any:
    return arrays[key] if isinstance(arrays, dict) else getattr(arrays, key)


# --------------------------------------------------------------------------- reading


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot be read as an HDF5 file ({error}); is it truncated or "
                           f"not a dataset?") from None


def _read(path: Path, group: Any, key: str) -> np.ndarray:
    import h5py

    if key not in group:
        where = f"group {group.name!r}" if group.name != "/" else "the file"
        raise DatasetError(f"{path}: key {key!r} is missing from {where}; a dataset needs "
                           f"{', '.join(KEYS)}")
    item = group[key]
    if not isinstance(item, h5py.Dataset):
        raise DatasetError(f"{path}: key {key!r} is a group, not an array (dict observation spaces are "
                           f"not supported)")
    if item.dtype.kind in "OSUV" or item.dtype.fields is not None:
        raise DatasetError(f"{path}: key {key!r} has dtype {item.dtype}, which is not allowed (expected numbers)")
    try:
        return item[()]
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: key {key!r} cannot be read ({error}); the file may be truncated") from None


def _read_ours_or_d4rl(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with _open(path) as f:
        raw_metadata = f.attrs.get(METADATA_ATTR)
        if raw_metadata is not None:
            if isinstance(raw_metadata, bytes):
                raw_metadata = raw_metadata.decode()
            try:
                metadata = json.loads(str(raw_metadata))
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}: key {METADATA_ATTR!r} is not valid JSON ({error})") from None
            arrays = {key: _read(path, f, key) for key in KEYS}
            return arrays, {**metadata, "format": "rlzoo"}
        arrays = {key: _read(path, f, key) for key in ("observations", "actions", "rewards", "terminals")}
        has_timeouts, has_next = "timeouts" in f, "next_observations" in f
        arrays["timeouts"] = _read(path, f, "timeouts") if has_timeouts else np.zeros_like(arrays["terminals"])
        if has_next:
            arrays["next_observations"] = _read(path, f, "next_observations")
    if not has_next:
        _check_lengths(path, {**arrays, "next_observations": arrays["observations"]})
        keep = ~arrays["timeouts"][:-1].astype(bool)
        arrays = {key: value[:-1][keep] for key, value in arrays.items()} | {
            "next_observations": arrays["observations"][1:][keep]}
    return arrays, {"format": "d4rl"}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The stored metadata of an rlzoo file without reading its arrays ({} for D4RL and Minari data)."""
    source = _resolve(path)
    if source.is_dir():
        return {}
    with _open(source) as f:
        raw = f.attrs.get(METADATA_ATTR)
    if raw is None:
        return {}
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{source}: key {METADATA_ATTR!r} is not valid JSON ({error})") from None


def minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def _resolve(path: str | Path) -> Path:
    """A file, a Minari dataset folder, or a Minari dataset id under $MINARI_DATASETS_PATH."""
    path = Path(path)
    if path.exists():
        if not (path.is_file() or path.is_dir()):  # reading a FIFO or a device would wait forever or never end
            raise DatasetError(f"{path}: not a regular file or a folder (a FIFO, socket or device); a dataset is an "
                               f"HDF5 file or a Minari dataset folder")
        return path
    candidate = minari_root() / path
    if candidate.is_dir():
        return candidate
    raise DatasetError(f"{path}: no such file or folder (nor a Minari dataset id under {minari_root()}, "
                       f"set by MINARI_DATASETS_PATH)")


def _episode_index(name: str) -> int:
    match = re.fullmatch(r"episode_(\d+)", name)
    return int(match.group(1)) if match else -1


def _read_minari(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = folder / MINARI_FILE
    if not path.exists():
        raise DatasetError(f"{folder}: not a Minari hdf5 dataset (no {MINARI_FILE} there)")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in KEYS}
    with _open(path) as f:
        env_spec = f.attrs.get("env_spec")
        names = sorted((n for n in f if _episode_index(n) >= 0), key=_episode_index)
        if not names:
            raise DatasetError(f"{path}: key 'episode_0' is missing: no episode groups in the file")
        for name in names:
            episode = f[name]
            obs = _read(path, episode, "observations")
            episode_arrays = {key: _read(path, episode, key) for key in ("actions", "rewards", "terminations",
                                                                          "truncations")}
            steps = episode_arrays["rewards"].shape[0] if episode_arrays["rewards"].ndim else -1
            if obs.ndim == 0 or obs.shape[0] != steps + 1:
                raise DatasetError(f"{path}: key '{name}/observations' has {obs.shape[0] if obs.ndim else 0} rows; "
                                   f"expected {steps + 1} (one more than '{name}/rewards')")
            parts["observations"].append(obs[:-1])
            parts["next_observations"].append(obs[1:])
            parts["actions"].append(episode_arrays["actions"])
            parts["rewards"].append(episode_arrays["rewards"])
            parts["terminals"].append(episode_arrays["terminations"])
            parts["timeouts"].append(episode_arrays["truncations"])
    metadata_file = folder / "data" / "metadata.json"
    if metadata_file.exists():
        try:
            env_spec = json.loads(metadata_file.read_text()).get("env_spec", env_spec)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{metadata_file}: key 'env_spec' cannot be read: invalid JSON ({error})") from None
    metadata: dict[str, Any] = {"format": "minari"}
    if env_spec is not None:
        try:
            spec = json.loads(env_spec) if isinstance(env_spec, (str, bytes)) else env_spec
            metadata["env_id"] = spec.get("id") if isinstance(spec, dict) else None
        except json.JSONDecodeError:
            pass
    for key, chunks in parts.items():
        first = chunks[0]
        for name, chunk in zip(names, chunks):
            if chunk.shape[1:] != first.shape[1:] or chunk.dtype.kind != first.dtype.kind:
                raise DatasetError(f"{path}: key '{name}/{key}' has shape {chunk.shape[1:]} and dtype {chunk.dtype}; "
                                   f"'{names[0]}' has {first.shape[1:]} and {first.dtype}")
    arrays = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    return arrays, metadata


def to_device(arrays: dict[str, np.ndarray], discrete: bool | None = None) -> Dataset:
    """Host arrays as a `Dataset` on the default device, with the dtypes of the module docstring."""
    if discrete is None:
        discrete = arrays["actions"].dtype.kind in "iu" and arrays["actions"].ndim == 1
    return Dataset(
        observations=jnp.asarray(arrays["observations"], jnp.float32),
        actions=jnp.asarray(arrays["actions"], jnp.int32 if discrete else jnp.float32),
        rewards=jnp.asarray(arrays["rewards"], jnp.float32),
        next_observations=jnp.asarray(arrays["next_observations"], jnp.float32),
        terminals=jnp.asarray(arrays["terminals"]).astype(bool),
        timeouts=jnp.asarray(arrays["timeouts"]).astype(bool),
    )


def load(path: str | Path, normalize_obs: bool = False) -> tuple[Dataset, dict[str, Any]]:
    """Reads an rlzoo, D4RL or Minari dataset into device arrays; returns (dataset, metadata).

    With `normalize_obs`, observations and next observations are standardised by
    the mean and std of `observations`, which are returned in the metadata as
    `obs_mean` and `obs_std` (lists) so that a policy can normalise raw
    observations the same way (`obs_stats(metadata)`).
    """
    source = _resolve(path)
    try:
        if source.is_dir():
            arrays, metadata = _read_minari(source)
            source = source / MINARI_FILE
        else:
            arrays, metadata = _read_ours_or_d4rl(source)
    except OSError as error:  # h5py's errors for damaged files that open but cannot be walked
        raise DatasetError(f"{source}: cannot be read ({error}); is it truncated or damaged?") from None
    for key in KEYS:
        _check_array(source, key, arrays[key])
    _check_lengths(source, arrays)
    if arrays["rewards"].shape[0] == 0:
        raise DatasetError(f"{source}: key 'rewards' is empty: the dataset has no transitions")
    if metadata["format"] == "rlzoo":
        found = checksum(arrays)
        if found != metadata.get("checksum"):
            raise DatasetError(f"{source}: key 'checksum' does not match the arrays (stored "
                               f"{metadata.get('checksum')}, computed {found}); the file was modified or damaged")
    metadata = {**metadata, "source": str(source), "num_transitions": int(arrays["rewards"].shape[0])}
    dataset = to_device(arrays)
    if normalize_obs:
        stats = compute_obs_stats(dataset)
        dataset = normalize(dataset, stats)
        metadata = {**metadata, "obs_mean": np.asarray(stats.mean).tolist(), "obs_std": np.asarray(stats.std).tolist()}
    return dataset, metadata


# --------------------------------------------------------------------------- writing


def save(path: str | Path, dataset: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """Writes `dataset` (a `Dataset` or a dict of the six keys) and its metadata; returns the metadata written.

    The checksum, row count and rlzoo version are added to the metadata. The file is
    written beside its destination and renamed into place, so a reader never sees a
    half-written file.
    """
    import h5py

    import rlzoo

    path = Path(path)
    device = to_device({key: np.asarray(_get(dataset, key)) for key in KEYS})  # the dtypes `load` returns
    arrays = {key: np.asarray(getattr(device, key)) for key in KEYS}
    for key in KEYS:
        _check_array(path, key, arrays[key])
    _check_lengths(path, arrays)
    metadata = {**metadata, "num_transitions": int(arrays["rewards"].shape[0]),
                "rlzoo_version": rlzoo.__version__, "checksum": checksum(arrays)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as f:
        for key in KEYS:
            f.create_dataset(key, data=arrays[key], compression="gzip", compression_opts=1)
        f.attrs[METADATA_ATTR] = json.dumps(metadata)
    partial.replace(path)
    return metadata


# --------------------------------------------------------------------------- using


def compute_obs_stats(dataset: Dataset, eps: float = 1e-3) -> ObsStats:
    """Mean and std (floored at `eps`) of the dataset's observations."""
    return ObsStats(dataset.observations.mean(0), dataset.observations.std(0) + eps)


def obs_stats(metadata: dict[str, Any]) -> ObsStats | None:
    """The observation statistics `load(..., normalize_obs=True)` stored in the metadata (None without)."""
    if "obs_mean" not in metadata:
        return None
    return ObsStats(jnp.asarray(metadata["obs_mean"], jnp.float32), jnp.asarray(metadata["obs_std"], jnp.float32))


def normalize(dataset: Dataset, stats: ObsStats) -> Dataset:
    return dataset._replace(observations=stats.normalize(dataset.observations),
                            next_observations=stats.normalize(dataset.next_observations))


def sample(dataset: Dataset, key: jax.Array, batch_size: int) -> Dataset:
    """A uniform minibatch of `batch_size` transitions, drawn with replacement (jittable)."""
    rows = jax.random.randint(key, (batch_size,), 0, dataset.rewards.shape[0])
    batch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), dataset)
    chex.assert_shape(batch.rewards, (batch_size,))
    return batch


def normalized_score(refs: dict[str, Any], returns: Any) -> Any:
    """D4RL's normalised score, 100 * (return - random) / (expert - random).

    `refs` is a dataset's metadata (or any dict) with `ref_min_score` (the random
    policy's return) and `ref_max_score` (the expert's). Works on floats, NumPy and
    traced arrays.
    """
    if refs.get("ref_min_score") is None or refs.get("ref_max_score") is None:
        raise DatasetError(f"{refs.get('source', 'metadata')}: key 'ref_min_score'/'ref_max_score' is missing; "
                           f"normalised scores need the random and expert returns")
    low, high = float(refs["ref_min_score"]), float(refs["ref_max_score"])
    return 100.0 * (returns - low) / (high - low)


def has_reference_scores(metadata: dict[str, Any]) -> bool:
    return metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None


def episode_returns(dataset: Dataset) -> np.ndarray:
    """Undiscounted returns of the episodes that end (terminal or timeout) within the dataset, in order."""
    rewards = np.asarray(dataset.rewards, np.float64)
    ends = np.flatnonzero(np.asarray(dataset.terminals) | np.asarray(dataset.timeouts))
    if ends.size == 0:
        return np.zeros(0)
    sums = np.cumsum(rewards)[ends]
    return np.diff(np.concatenate([[0.0], sums]))
