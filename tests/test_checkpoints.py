"""Facts about checkpoints and resume: a killed run continues bit for bit, damage and mismatches are refused."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import run_dqn, run_ppo

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--total-timesteps", "8192", "--num-chunks", "4", "--no-progress", "--num-seeds", "2"]


def final_params(run_dir: Path, step: int = 16):
    state = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").absolute())
    return jax.tree.leaves(state)


def assert_same_leaves(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt") / "uninterrupted"
    run_ppo([*ARGS, "--run-dir", str(run_dir)])
    return run_dir


KILL_SCRIPT = textwrap.dedent("""
    import importlib, os, signal, sys
    from rlzoo import checkpoint
    from rlzoo.runner import run_cli
    algo = importlib.import_module("rlzoo.algorithms." + sys.argv[1])
    kill_after, saves = int(sys.argv[2]), []
    original_save = checkpoint.save
    def save_then_maybe_die(manager, *args, **kwargs):
        original_save(manager, *args, **kwargs)  # orbax saves asynchronously: the kill may land mid-write
        if os.path.basename(str(manager.directory)) != "best":  # the chunk checkpoints, not the best one
            saves.append(1)
        if len(saves) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save = save_then_maybe_die
    run_cli(sys.argv[1], algo.Config, algo.HParams, algo.make_train, args=sys.argv[3:])
""")


def test_a_ppo_run_killed_after_its_second_checkpoint_resumes_to_the_same_parameters_bit_for_bit(
        uninterrupted, tmp_path):
    kill_resume_and_compare("ppo", run_ppo, ARGS, uninterrupted, tmp_path, updates_per_chunk=4, kill_after=2)


def test_a_dqn_run_with_its_replay_buffer_resumes_bit_for_bit_after_sigkill(tmp_path):
    args = ["--total-timesteps", "4000", "--learning-starts", "1000", "--num-chunks", "4", "--no-progress",
            "--num-seeds", "2"]
    reference = tmp_path / "reference"
    run_dqn([*args, "--run-dir", str(reference)])
    kill_resume_and_compare("dqn", run_dqn, args, reference, tmp_path, updates_per_chunk=100, final_step=400,
                            kill_after=3)


def kill_resume_and_compare(algo, run, args, reference, tmp_path, updates_per_chunk, kill_after, final_step=16):
    """SIGKILL right after the `kill_after`-th checkpoint save is issued (a fixed point, so a failure reproduces;
    orbax saves asynchronously, so the kill may still land mid-write), resume, compare with `reference`."""
    killed = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, algo, str(kill_after), *args, "--run-dir", str(killed)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert process.returncode == -9, process.stderr[-2000:]  # SIGKILL
    assert not (killed / "summary.json").exists()

    summary = run(["--resume", str(killed), "--no-progress"])
    # Orbax finishes a save before it starts the next, so the kill may land in the last save's write (losing it)
    # but never in the one before.
    saved = [updates_per_chunk * (kill_after - 1), updates_per_chunk * kill_after]
    assert summary["resumed_from_update"] in saved, (summary["resumed_from_update"], saved)
    assert_same_leaves(final_params(killed, final_step), final_params(reference, final_step))
    assert (killed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


KILL_MID_WRITE_SCRIPT = textwrap.dedent("""
    import importlib, os, signal, sys, threading
    from pathlib import Path
    from orbax.checkpoint._src.path import atomicity
    from rlzoo import checkpoint
    from rlzoo.runner import run_cli
    algo = importlib.import_module("rlzoo.algorithms." + sys.argv[1])
    kill_step, held = sys.argv[2], threading.Event()
    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize_or_hold(self):
        final = Path(str(self._final_path))
        if final.name == kill_step and final.parent.name == "checkpoints":  # this step's chunk checkpoint
            held.set()  # its files are written to the temporary folder; the commit (a rename) never comes
            await __import__("asyncio").sleep(3600)
        await original_finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_hold
    original_save = checkpoint.save
    def save_then_die_mid_write(manager, step, *args, **kwargs):
        original_save(manager, step, *args, **kwargs)
        if str(step) == kill_step and Path(str(manager.directory)).name == "checkpoints":
            assert held.wait(120), "the background write never reached its commit"
            temporary = [p.name for p in Path(str(manager.directory)).iterdir() if "tmp" in p.name]
            print("in flight:", temporary, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save = save_then_die_mid_write
    run_cli(sys.argv[1], algo.Config, algo.HParams, algo.make_train, args=sys.argv[3:])
""")


def test_a_kill_during_an_asynchronous_checkpoint_write_loses_only_that_checkpoint(uninterrupted, tmp_path):
    """The third chunk's checkpoint is held in orbax's background thread just before its commit and the process
    is killed there: the folder keeps checkpoints 4 and 8, the temporary folder is never taken for a checkpoint,
    and the resumed run ends bit for bit where the uninterrupted one does."""
    killed = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE_SCRIPT, "ppo", "12", *ARGS, "--run-dir", str(killed)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert process.returncode == -9, process.stderr[-2000:]
    assert "in flight: ['12.orbax-checkpoint-tmp" in process.stdout, process.stdout
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 8]

    summary = run_ppo(["--resume", str(killed), "--no-progress"])
    assert summary["resumed_from_update"] == 8
    assert_same_leaves(final_params(killed), final_params(uninterrupted))
    assert (killed / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()


# Restoring the truncated files fails inside orbax; a read still in flight then calls back into orbax's
# closed asyncio loop (a RuntimeError with no frames of ours, raised after the restore has failed).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_corrupted_checkpoint_is_reported_and_the_previous_one_is_used(uninterrupted, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(uninterrupted), str(damaged)], check=True)
    for file in (damaged / "checkpoints" / "16" / "state").rglob("*"):
        if file.is_file() and file.parent.name == "d":
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated
    summary = run_ppo(["--resume", str(damaged), "--no-progress"])
    err = capsys.readouterr().err
    assert "error: checkpoint 16 cannot be read" in err and "corrupt-16" in err
    assert summary["resumed_from_update"] == 12
    assert (damaged / "checkpoints" / "corrupt-16").is_dir()
    assert_same_leaves(final_params(damaged), final_params(uninterrupted))


def test_resume_refuses_flags_that_contradict_the_saved_run(uninterrupted, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_ppo(["--resume", str(uninterrupted), "--lr", "1e-3", "--num-envs", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lr=0.001 (the run has 0.00025)" in err and "num_envs=8 (the run has 4)" in err


def test_a_checkpoint_written_under_another_config_is_refused_naming_the_fields(uninterrupted, tmp_path, capsys):
    edited = tmp_path / "edited"
    subprocess.run(["cp", "-r", str(uninterrupted), str(edited)], check=True)
    config = json.loads((edited / "config.json").read_text())
    config["hparams"]["gamma"] = 0.9
    config["config"]["num_epochs"] = 2
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        run_ppo(["--resume", str(edited), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "written under a different configuration" in err
    assert "config.num_epochs: checkpoint has 4, this run has 2" in err and "hparams.gamma" in err


def test_non_finite_losses_stop_the_run_naming_the_quantity_and_update(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_ppo(["--total-timesteps", "8192", "--num-chunks", "4", "--no-progress", "--lr", "1e30",
                 "--max-grad-norm", "1e30", "--run-dir", str(tmp_path / "nan")])
    assert exit_info.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "became nan at update" in err or "became inf at update" in err
    assert "(configuration default, seed 0)" in err and "Traceback" not in err


def test_zero_size_arrays_which_orbax_cannot_save_come_back_from_a_checkpoint(tmp_path):
    """MJX states (playground/<id>) hold zero-size arrays, e.g. the actuator activations of a model without any;
    orbax refuses to save them, so they are saved as scalars and put back on restore, and the rest comes back exactly."""
    import jax.numpy as jnp

    from rlzoo import checkpoint

    state = {"params": jnp.arange(3.0), "act": jnp.zeros((4, 0)), "nested": (jnp.ones(2, jnp.int32),
                                                                           jnp.zeros((0,), jnp.bool_))}
    manager = checkpoint.checkpoint_manager(tmp_path / "checkpoints")
    checkpoint.save(manager, 7, state, {"algo": "test"})
    manager.wait_until_finished()
    step, restored = checkpoint.restore_latest(manager, jax.tree.map(jnp.zeros_like, state), {"algo": "test"})
    assert step == 7
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
