"""Golden outputs: every algorithm file, run for a few updates from a fixed seed, gives the same numbers.

This is the guard for refactors. Each case builds a tiny `Config`, runs
`make_train(config)` from `PRNGKey(0)` with default `HParams` (jitted, the
way the CLI and sweeps run it) and compares, bit for bit, with the numbers
recorded in `tests/golden/outputs.json`:

- every metric, as the exact float32 values of each update;
- a digest of the whole final training state (parameters, optimiser states,
  targets, replay, env state, key). The digest is a sorted multiset of per-leaf
  hashes (dtype, shape, bytes), so moving a field from one NamedTuple to another
  keeps it, while any change of a value changes it.

A change that is meant to move a number (fusing two calls changes float order,
for example) says which and why in its commit, and regenerates on purpose:

    RLZOO_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Bit for bit holds only on the kind of CPU the file was recorded on: XLA compiles
for the host's vector instructions, so another CPU rounds differently (recorded on
an Intel Xeon, the same runs on an AMD EPYC with AVX2 differed by at most 6e-6
relative in every metric, 1e-3 in PPO's policy losses, which sit near 0). The file
records its machine (`numerics_fingerprint`). On another machine the metrics are
compared within `RTOL`/`ATOL`, which any change of a formula, of a seed or of the
order of random draws breaks, the state digest is skipped, and the test says so.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

GOLDEN_FILE = Path(__file__).parent / "golden" / "outputs.json"
REGENERATE = os.environ.get("RLZOO_REGENERATE_GOLDEN") == "1"
MACHINE_KEY = "_recorded_on"
RTOL, ATOL = 1e-4, 1e-5  # off the recording machine only; measured cross-CPU differences are below 1e-5 absolute

TINY_REPLAY = dict(total_timesteps=64, num_envs=4, buffer_size=64, batch_size=8, learning_starts=32)
TINY_OFF_POLICY = dict(total_timesteps=48, num_envs=4, buffer_size=64, batch_size=8, learning_starts=24,
                       hidden_sizes=(16, 16))
TINY_OFFLINE = dict(total_updates=6, steps_per_update=3, batch_size=8, episodes_per_eval=1, hidden_sizes=(16, 16))

# name -> (algorithm module, Config fields, HParams fields). Offline cases get `dataset` added.
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "td": ("td", dict(total_timesteps=2 * 8 * 32, hidden_sizes=(16, 16), num_epochs=2), {}),
    "td_random_walk_backward": ("td", dict(env_id="RandomWalk19-v0", value_fn="tabular", view="backward",
                                           policy="random", total_timesteps=2 * 8 * 32), dict(lam=0.8)),
    "ppo": ("ppo", dict(total_timesteps=2 * 4 * 32, num_envs=4, num_steps=32, hidden_sizes=(16, 16)), {}),
    "ppo_pendulum": ("ppo", dict(env_id="Pendulum-v1", total_timesteps=2 * 4 * 32, num_envs=4, num_steps=32,
                                 hidden_sizes=(16, 16)), {}),
    "ppo_s5": ("ppo_s5", dict(total_timesteps=2 * 4 * 16, num_envs=4, num_steps=16, num_minibatches=2,
                              d_model=8, state_size=8, hidden_sizes=(8,)), {}),
    "ppo_gru": ("ppo_s5", dict(sequence_model="gru", total_timesteps=2 * 4 * 16, num_envs=4, num_steps=16,
                               num_minibatches=2, d_model=8, hidden_sizes=(8,)), {}),
    "pqn": ("pqn", dict(total_timesteps=2 * 8 * 16, num_envs=8, num_steps=16, num_minibatches=4,
                        hidden_sizes=(16, 16)), {}),
    "pqn_batch_norm": ("pqn", dict(total_timesteps=2 * 8 * 16, num_envs=8, num_steps=16, num_minibatches=4,
                                   hidden_sizes=(16,), norm="batch"), dict(lam=0.0)),
    "dqn": ("dqn", dict(**TINY_REPLAY, hidden_sizes=(16, 16)), dict(target_period=3.0)),
    "dqn_c51_double_dueling_nstep": ("dqn", dict(**TINY_REPLAY, hidden_sizes=(16, 16), loss="c51", double=True,
                                                 dueling=True, n_step=3, num_atoms=11),
                                     dict(target_period=3.0, tau=0.5)),
    "dqn_hl_gauss_huber": ("dqn", dict(**TINY_REPLAY, hidden_sizes=(16, 16), loss="hl_gauss", num_atoms=11), {}),
    "iqn": ("iqn", dict(**TINY_REPLAY, hidden_sizes=(16, 16)), dict(target_period=2.0, roll_period=4.0)),
    "spr": ("spr", dict(**TINY_REPLAY, k_steps=2, transition_channels=4, num_atoms=11),
            dict(target_period=3.0)),
    "zp": ("zp", dict(**TINY_REPLAY, hidden_sizes=(16,), latent_dim=8, num_distractors=2), {}),
    "sac": ("sac", TINY_OFF_POLICY, {}),
    "td3": ("td3", TINY_OFF_POLICY, {}),
    "isac": ("isac", TINY_OFF_POLICY, dict(target_period=2.0, roll_period=4.0)),
    "bc": ("bc", TINY_OFFLINE, {}),
    "iql": ("iql", TINY_OFFLINE, {}),
    "td3_bc": ("td3_bc", TINY_OFFLINE, {}),
    "cql": ("cql", dict(**TINY_OFFLINE, num_sampled_actions=3), {}),
    "csve": ("csve", dict(**TINY_OFFLINE, model_members=2, model_hidden_sizes=(8,), model_max_epochs=2,
                          model_steps_per_epoch=3), {}),
}
OFFLINE = {"bc", "iql", "td3_bc", "cql", "csve"}


def leaf_digest(leaf: Any) -> str:
    """sha256 of one array's dtype, shape and bytes (typed PRNG keys by their key data)."""
    array = jnp.asarray(leaf)
    if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
        array = jax.random.key_data(array)
    array = np.ascontiguousarray(np.asarray(array))
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()


def state_digest(state: Any) -> str:
    """A digest of every leaf of the state that ignores how the leaves are arranged in the pytree."""
    return hashlib.sha256("".join(sorted(leaf_digest(leaf) for leaf in jax.tree.leaves(state))).encode()).hexdigest()


def tiny_dataset(directory: Path) -> str:
    """A small Pendulum-v1 dataset of fixed random transitions (with some episode ends), written once."""
    from rlzoo import datasets

    path = directory / "golden-pendulum.hdf5"
    if not path.exists():
        rng = np.random.default_rng(0)
        n = 1024
        obs = rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)
        arrays = {"observations": obs, "next_observations": np.roll(obs, -1, axis=0),
                  "actions": rng.uniform(-2.0, 2.0, (n, 1)).astype(np.float32),
                  "rewards": rng.uniform(-16.0, 0.0, n).astype(np.float32),
                  "terminals": (np.arange(n) % 50 == 49), "timeouts": (np.arange(n) % 64 == 63)}
        datasets.save(path, arrays, {"env_id": "Pendulum-v1", "random_return": -1200.0, "expert_return": -150.0})
    return str(path)


def run_case(name: str, dataset_dir: Path) -> dict[str, Any]:
    """Runs one case and returns its metrics (exact float lists) and final-state digest."""
    module_name, config_fields, hparams_fields = CASES[name]
    module = importlib.import_module(f"rlzoo.algorithms.{module_name}")
    if name in OFFLINE:
        config_fields = {**config_fields, "dataset": tiny_dataset(dataset_dir)}
    trainer = module.make_train(module.Config(**config_fields))
    hparams = module.HParams(**hparams_fields)
    key = jax.random.PRNGKey(0)
    if trainer.data is not None:
        state, metrics = jax.jit(lambda k, hp, d: trainer.run(trainer.init(k, hp, d), hp, trainer.num_updates, d))(
            key, hparams, trainer.data)
    else:
        state, metrics = jax.jit(trainer)(key, hparams)
    return {"num_updates": trainer.num_updates,
            "metrics": {k: np.asarray(v, np.float64).ravel().tolist() for k, v in sorted(metrics.items())},
            "state_digest": state_digest(state)}


def load_golden() -> dict[str, Any]:
    return json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.exists() else {}


def cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


def numerics_fingerprint() -> str:
    """What decides XLA's float rounding here: jax version, backend, CPU architecture, vendor and vector width."""
    flags = cpu_flags()
    width = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"
    vendor = "amd" if "AuthenticAMD" in Path("/proc/cpuinfo").read_text(errors="ignore") else "intel-or-other"
    return f"jax {jax.__version__} {jax.default_backend()} {platform.machine()} {vendor} {width}"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.mark.parametrize("name", sorted(CASES))
def test_algorithm_numbers_match_the_golden_run(name, dataset_dir):
    result = run_case(name, dataset_dir)
    if REGENERATE:
        golden = load_golden()
        golden[name] = result
        golden[MACHINE_KEY] = numerics_fingerprint()
        GOLDEN_FILE.parent.mkdir(exist_ok=True)
        GOLDEN_FILE.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")
        pytest.skip("regenerated")
    golden = load_golden()
    assert name in golden, f"no golden output for {name!r}: regenerate on purpose (see the module docstring)"
    expected = golden[name]
    assert result["num_updates"] == expected["num_updates"]
    assert sorted(result["metrics"]) == sorted(expected["metrics"]), "metric names changed"
    exact = golden.get(MACHINE_KEY) == numerics_fingerprint()
    for metric, values in expected["metrics"].items():
        got = np.asarray(result["metrics"][metric])
        want = np.asarray(values)
        same = (np.array_equal(got, want, equal_nan=True) if exact
                else np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True))
        assert same, f"{name}: metric {metric!r} moved; max |diff| {np.nanmax(np.abs(got - want)):.3g}"
    if exact:
        assert result["state_digest"] == expected["state_digest"], f"{name}: final training state changed"
    else:
        warnings.warn(f"golden outputs were recorded on {golden.get(MACHINE_KEY)!r}, this is "
                      f"{numerics_fingerprint()!r}: metrics compared within rtol {RTOL}, atol {ATOL}; "
                      f"state digest not compared")


def test_state_digest_ignores_layout_but_not_values():
    a, b = jnp.arange(3.0), jnp.ones((2, 2), jnp.int32)
    assert state_digest((a, {"x": b})) == state_digest({"y": [b], "z": a})
    assert state_digest((a, b)) != state_digest((a.at[1].set(1.5), b))
    assert state_digest((a,)) != state_digest((a.astype(jnp.float64 if jax.config.x64_enabled else jnp.int32),))
