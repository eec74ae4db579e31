"""Shared test set-up: a persistent XLA compilation cache so that programs compiled
by one test (or an earlier `make test`) are reused, and fixtures that train once
and are shared by every test that checks the result."""

import contextlib
import fcntl
import json
import os
from pathlib import Path

import rlzoo  # noqa: F401  (sets the XLA CPU flag before JAX starts its backend)
import jax

# RLZOO_TEST_JAX_CACHE: another cache folder, e.g. the source tree's when tests/mutations.py runs a scratch copy.
CACHE_DIR = Path(os.environ.get("RLZOO_TEST_JAX_CACHE", Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))  # for subprocesses


import pytest  # noqa: E402

TINY = ["--total-timesteps", "8192", "--num-chunks", "4", "--no-progress"]


def run_ppo(args):
    """PPO's command line, in-process."""
    from rlzoo.algorithms import ppo
    from rlzoo.runner import run_cli

    return run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=args)


def run_dqn(args):
    """DQN's command line, in-process."""
    from rlzoo.algorithms import dqn
    from rlzoo.runner import run_cli

    return run_cli("dqn", dqn.Config, dqn.HParams, dqn.make_train, args=args)


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory):
    """One tiny PPO CLI run (2 lrs x 2 seeds, 16 updates in 4 chunks), shared by the run-folder tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "sweep"
    summary = run_ppo([*TINY, "--run-dir", str(run_dir), "--num-seeds", "2", "--sweep", "lr=1e-3,3e-4"])
    return run_dir, summary


@contextlib.contextmanager
def exclusive(lock_file: Path):
    """Holds an exclusive lock on `lock_file` (pytest-xdist workers take turns)."""
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def session_folder(tmp_path_factory) -> Path:
    """A temporary folder of this test session that every pytest-xdist worker sees (the workers' base
    folders share a parent that is new each session); without xdist, the session's own base folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def pendulum_offline(tmp_path_factory):
    """Pendulum-v1 offline datasets, all five tiers of 20,000 transitions, from a small PPO run: built once per
    session by whichever worker needs them first (~20 s), then read by the others."""
    from types import SimpleNamespace

    from rlzoo.experiments import offline_datasets as offline

    shared = session_folder(tmp_path_factory)
    config = offline.GenerateConfig(out=str(shared / "datasets"), tier_size=20_000, num_envs=100,
                                    behaviour_timesteps=65_536, num_snapshots=17)
    index = shared / "datasets.json"
    with exclusive(shared / "datasets.lock"):
        if not index.exists():
            written = offline.generate(config, offline.train_behaviour(config))
            index.write_text(json.dumps(written, default=lambda x: x.item()))
    return SimpleNamespace(config=config, written=json.loads(index.read_text()))
