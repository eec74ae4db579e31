"""Facts about the CLI and run-folder contract that every algorithm file keeps."""

import csv
import json
import shutil
import warnings

import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlzoo.runner import mean_of_finished, plan_chunks
from tests.conftest import TINY, run_ppo


def test_run_folder_holds_config_metrics_summary_plot_and_checkpoints(sweep_run):
    run_dir, summary = sweep_run
    for name in ("config.json", "metrics.csv", "summary.json", "learning_curve.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 16

    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "ppo" and config["config"]["env_id"] == "CartPole-v1"
    assert config["hparams"]["lr"] == pytest.approx(2.5e-4) and config["run"]["sweep"] == ["lr=1e-3,3e-4"]

    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("final_return", "env_steps", "compile_s", "run_s", "steps_per_s"):
        assert key in saved
    assert set(saved["final_return"]) == {"lr=0.001", "lr=0.0003"}
    assert saved["env_steps"] == 8192
    # steps/s counts every member's env steps (2 lrs x 2 seeds) over the run time, compile excluded.
    assert saved["steps_per_s"] == pytest.approx(2 * 2 * saved["env_steps"] / saved["run_s"], rel=1e-9)


def test_metrics_csv_has_one_row_per_update_configuration_and_seed(sweep_run):
    run_dir, summary = sweep_run
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"update", "env_steps", "config", "seed", "episode_return"} <= set(rows[0])
    assert len(rows) == 16 * 2 * 2
    last = [r for r in rows if r["update"] == "16"]
    assert {int(r["env_steps"]) for r in last} == {8192}
    for label, value in summary["final_return"].items():
        returns = [float(r["episode_return"]) for r in last if r["config"] == label]
        assert np.mean(returns) == pytest.approx(value, rel=1e-5)


def test_resume_continues_from_the_last_checkpoint_and_reaches_the_same_parameters(sweep_run, tmp_path):
    run_dir, _ = sweep_run
    killed = tmp_path / "killed"
    shutil.copytree(run_dir, killed)
    # As if killed after the second of four chunks: later checkpoints never got written.
    for step in ("12", "16"):
        shutil.rmtree(killed / "checkpoints" / step)
    (killed / "summary.json").unlink()
    summary = run_ppo(["--resume", str(killed), "--no-progress"])
    assert summary["resumed_from_update"] == 8  # it did not start over

    restore = ocp.StandardCheckpointer()
    original = restore.restore((run_dir / "checkpoints" / "16" / "state").absolute())
    resumed = restore.restore((killed / "checkpoints" / "16" / "state").absolute())
    for a, b in zip(jax_leaves(original), jax_leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    with (killed / "metrics.csv").open() as f, (run_dir / "metrics.csv").open() as g:
        assert f.read() == g.read()


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.parametrize("args, message", [
    (["--env-id", "CartPol-v1"], "did you mean 'CartPole-v1'"),
    (["--lr", "0"], "lr=0.0 is not allowed: must lie in (0, inf)"),
    (["--lr", "-3e-4"], "lr=-0.0003 is not allowed"),
    (["--gamma", "1.5"], "gamma=1.5 is not allowed: must lie in [0, 1]"),
    (["--total-timesteps", "0"], "total_timesteps=0 is not allowed: must be > 0"),
    (["--num-minibatches", "3"], "num_minibatches=3 is not allowed: must divide num_envs * num_steps = 512"),
    (["--sweep", "num_envs=4,8"], "sweep over 'num_envs' is not allowed: it is a static Config field"),
    (["--sweep", "learning_rate=1,2"], "sweep over 'learning_rate' is not allowed: unknown field"),
    (["--sweep", "lr=1e-3,-1"], "sweep configuration lr=-1: lr=-1.0 is not allowed"),
    (["--sweep", "lr"], "sweep entry 'lr' is malformed"),
    (["--num-seeds", "0"], "num_seeds=0 is not allowed: must be >= 1"),
    (["--activation", "sigmoid"], "activation='sigmoid' is not allowed"),
    (["--resume", "/nonexistent/run"], "no config.json there"),
    (["--eval-episodes", "-1"], "eval_episodes=-1 is not allowed: must be >= 0"),
    (["--num-chunks", "0"], "num_chunks=0 is not allowed: must be >= 1"),
])
def test_bad_input_is_a_clear_error_naming_the_field(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_ppo([*TINY, "--run-dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # tyro wraps long messages in a box
    err = err.replace("│", "").replace("  ", " ")
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err


def test_a_run_folder_is_never_overwritten(sweep_run, capsys):
    run_dir, _ = sweep_run
    with pytest.raises(SystemExit):
        run_ppo([*TINY, "--run-dir", str(run_dir)])
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("num_updates, target, expected", [
    (976, 20, [61] * 16),  # PureJaxRL's CartPole: 976 = 16 x 61
    (16, 4, [4] * 4),
    (97, 10, [10] * 9 + [7]),  # a prime: one remainder chunk
    (5, 20, [1] * 5),
    (2**31 - 1, 20, [107374183] * 19 + [107374170]),  # a large prime: planned in at most 20 tries, not 2e9
])
def test_chunk_plan_covers_every_update_with_at_most_two_sizes(num_updates, target, expected):
    chunks = plan_chunks(num_updates, target)
    assert chunks == expected and sum(chunks) == num_updates and len(set(chunks)) <= 2


def test_tensorboard_logging_is_written_into_the_run_folder_when_asked_for(tmp_path):
    pytest.importorskip("tensorboardX")
    run_ppo([*TINY, "--run-dir", str(tmp_path / "tb"), "--log", "tensorboard", "--eval-episodes", "0"])
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert not (tmp_path / "tb" / "eval.csv").exists()  # evaluation was switched off


def test_the_mean_return_counts_finished_episodes_and_is_nan_without_a_warning_when_none_finished():
    assert mean_of_finished(np.array([1.0, np.nan, 3.0])) == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would fail here
        assert np.isnan(mean_of_finished(np.array([np.nan, np.nan])))


def test_a_second_identical_run_loads_every_program_from_the_compilation_cache(tmp_path):
    """The CLI keeps the persistent cache on (here the tests' own folder, which it keeps): the second run of the
    same command compiles nothing; its summary says so. Catches a cache that is off or written to nowhere."""
    args = [*TINY, "--num-seeds", "2", "--seed", "7"]
    first = run_ppo([*args, "--run-dir", str(tmp_path / "first")])
    second = run_ppo([*args, "--run-dir", str(tmp_path / "second")])
    assert first["compile_cache"]["dir"] == second["compile_cache"]["dir"] is not None
    assert first["compile_cache"]["hits"] + first["compile_cache"]["misses"] >= 2  # init and chunk, at least
    assert second["compile_cache"]["misses"] == 0 and second["compile_cache"]["hits"] >= 2, second["compile_cache"]


def test_no_compile_cache_compiles_afresh_and_says_so(tmp_path):
    summary = run_ppo([*TINY, "--no-compile-cache", "--run-dir", str(tmp_path / "run")])
    assert summary["compile_cache"] == {"dir": None, "hits": 0, "misses": 0}
    summary = run_ppo([*TINY, "--run-dir", str(tmp_path / "again")])  # and the next run has it back
    assert summary["compile_cache"]["dir"] is not None and summary["compile_cache"]["hits"] >= 1


def test_the_default_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from rlzoo.compile_cache import default_cache_dir, switched_off_by_environment

    monkeypatch.delenv("RLZOO_COMPILE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "rlzoo" / "jax"
    monkeypatch.setenv("RLZOO_COMPILE_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    for value, off in [("0", True), ("off", True), ("1", False), ("", False)]:
        monkeypatch.setenv("RLZOO_COMPILE_CACHE", value)
        assert switched_off_by_environment() is off, value
