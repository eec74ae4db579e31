"""Hostile use of the run harness (issue 24): one writer per run folder, validation before any side effect, no
silent no-ops, run-folder integrity after faults, clean exits. Each case asserts the exit or the error, that
the message names the field, and that nothing was lost or left broken."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlzoo import checkpoint
from rlzoo.algorithms import dqn, ppo
from rlzoo.logging import MetricsCSV
from rlzoo.runner import RunOptions, run_cli, run_experiment, run_folder_lock, warn_if_budget_is_cut
from rlzoo.sweep import make_grid
from rlzoo.trainer import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--total-timesteps", "1024", "--num-chunks", "2", "--eval-episodes", "0", "--no-progress"]


def cli_error(capsys, algo_module, args) -> str:
    """Runs the CLI expecting a clean refusal (exit code 2, one `error:` line or tyro's box for a flag's value,
    no traceback); returns the message with its whitespace collapsed."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(algo_module.__name__.rsplit(".", 1)[1], algo_module.Config, algo_module.HParams,
                algo_module.make_train, args=args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (err.startswith("error: ") or "Value error" in err) and "Traceback" not in err, err
    return " ".join(err.split())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete tiny PPO run on CartPole (2 chunks), copied by the tests that damage it."""
    run_dir = tmp_path_factory.mktemp("runs") / "ppo"
    run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=[*TINY, "--run-dir", str(run_dir)])
    return run_dir


# --------------------------------------------------------------------------- one writer per run folder


def test_a_second_writer_is_refused_naming_the_holder(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "busy"
    shutil.copytree(finished_run, run_dir)
    with run_folder_lock(run_dir):
        message = cli_error(capsys, ppo, ["--resume", str(run_dir), "--no-progress"])
    assert f"run_dir='{run_dir}' is in use by pid {os.getpid()}" in message
    before = (run_dir / "metrics.csv").read_bytes()
    assert (run_dir / "metrics.csv").read_bytes() == before


def test_a_lock_left_by_a_killed_process_holds_nothing(tmp_path):
    """The lock is the kernel's: it dies with its process, so a crash leaves a lock file that the next run takes."""
    run_dir = tmp_path / "crashed"
    run_dir.mkdir()
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from rlzoo.runner import run_folder_lock
        with run_folder_lock(Path({str(run_dir)!r})):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"is in use by pid {holder.pid}"):
        with run_folder_lock(run_dir):
            pass
    holder.kill()
    holder.wait()
    with run_folder_lock(run_dir):  # the stale lock file is taken over
        assert f"pid {os.getpid()}" in (run_dir / ".lock").read_text()


# --------------------------------------------------------------------------- validation before side effects


def test_a_rejected_configuration_leaves_no_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "typo"
    message = cli_error(capsys, ppo, ["--env-id", "CartPole-v9", *TINY, "--run-dir", str(run_dir)])
    assert "env_id 'CartPole-v9' is unknown" in message and not run_dir.exists()


def test_a_new_run_refuses_a_folder_holding_checkpoints_it_did_not_write(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "foreign"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "config.json").unlink()
    message = cli_error(capsys, ppo, [*TINY, "--seed", "5", "--run-dir", str(run_dir)])
    assert "holds checkpoints but no config.json" in message and not (run_dir / "config.json").exists()


@pytest.mark.parametrize("make_target, reason", [
    (lambda tmp: tmp / "a_file", "File exists"),
    (lambda tmp: Path("/proc/rlzoo_run"), "No such file or directory"),
])
def test_a_run_dir_that_cannot_be_a_folder_is_a_clear_error_naming_the_flag(make_target, reason, tmp_path, capsys):
    target = make_target(tmp_path)
    if target.parent == tmp_path:
        target.write_text("not a folder")
    message = cli_error(capsys, ppo, [*TINY, "--run-dir", str(target)])
    assert f"run_dir='{target}' cannot be used as a run folder" in message and reason in message


# --------------------------------------------------------------------------- no silent no-ops


def test_a_replay_run_that_would_take_no_gradient_step_is_refused():
    with pytest.raises(ConfigError, match=r"learning_starts=10000 is not allowed: must be < total_timesteps \(2000\)"):
        dqn.Config(total_timesteps=2_000)


def test_a_budget_that_is_not_a_whole_number_of_updates_is_said_loudly(capsys):
    warn_if_budget_is_cut(ppo.Config(total_timesteps=1023), ppo.make_train(ppo.Config(total_timesteps=1023)))
    err = capsys.readouterr().err
    assert "total_timesteps=1023 is not a multiple of the 512 env steps of one update, so 512 steps" in err
    warn_if_budget_is_cut(ppo.Config(total_timesteps=1024), ppo.make_train(ppo.Config(total_timesteps=1024)))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("values", [[1e-4, 0.0001], [1.0000001e-3, 1.0000002e-3]])
def test_sweep_values_that_collide_are_refused(values):
    with pytest.raises(ConfigError, match="sweep values of 'lr' collide"):
        make_grid(ppo.HParams(), {"lr": values})


# --------------------------------------------------------------------------- run-folder integrity


def test_resume_drops_a_metrics_row_cut_off_mid_write(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("update,env_steps,config,seed,loss\r\n1,4,default,0,0.5\r\n2,8,default,0,0.25\r\n3,12,def")
    MetricsCSV(path, ["loss"], ["default"], 1).truncate_after(10)
    assert path.read_bytes() == b"update,env_steps,config,seed,loss\r\n1,4,default,0,0.5\r\n2,8,default,0,0.25\r\n"
    path.write_text("update,env_steps,config,seed,loss\r\n1,4,default,0,0.5\r\n2,8,default,0,0.2")  # a number cut
    MetricsCSV(path, ["loss"], ["default"], 1).truncate_after(10)
    assert path.read_bytes() == b"update,env_steps,config,seed,loss\r\n1,4,default,0,0.5\r\n"


def test_the_same_checkpoint_step_corrupted_twice_is_set_aside_twice(tmp_path):
    import jax.numpy as jnp

    manager = checkpoint.checkpoint_manager(tmp_path / "checkpoints")
    state = {"w": jnp.arange(3.0)}
    notes = []
    for _ in range(2):
        checkpoint.save(manager, 5, state, {"run": 1})
        manager.wait_until_finished()
        notes.append(checkpoint._set_aside(manager, 5, ValueError("damaged")))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["corrupt-5", "corrupt-5-2"]
    assert [note.startswith("error: checkpoint 5 cannot be read") for note in notes] == [True, True]
    assert notes[1].endswith(f"moved it to {tmp_path / 'checkpoints' / 'corrupt-5-2'} and trying the one before it")


def test_resume_refuses_another_run_dir_and_explicit_flags_that_contradict_even_at_their_defaults(
        finished_run, tmp_path, capsys):
    message = cli_error(capsys, ppo, ["--resume", str(finished_run), "--run-dir", str(tmp_path / "elsewhere")])
    assert "contradicts resume=" in message
    saved = json.loads((finished_run / "config.json").read_text())
    assert saved["config"]["total_timesteps"] == 1024 and ppo.Config().total_timesteps == 500_000
    message = cli_error(capsys, ppo, ["--resume", str(finished_run), "--total-timesteps", "500000"])
    assert "total_timesteps=500000 (the run has 1024)" in message


@pytest.mark.parametrize("damage, expected", [
    (lambda text: text[: len(text) // 2], "is not valid JSON"),
    (lambda text: text.replace('"hparams": {', '"hparams": {"lr_typo": 1.0, ', 1), "unknown keys ['lr_typo']"),
])
def test_a_damaged_config_json_is_a_clear_error_on_resume(finished_run, tmp_path, capsys, damage, expected):
    run_dir = tmp_path / "damaged"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "config.json").write_text(damage((run_dir / "config.json").read_text()))
    assert expected in cli_error(capsys, ppo, ["--resume", str(run_dir), "--no-progress"])


# --------------------------------------------------------------------------- clean exits


def test_sigterm_keeps_the_finished_chunks_exits_with_one_line_and_resume_completes(tmp_path):
    run_dir = tmp_path / "stopped"
    command = [sys.executable, "algorithms/ppo.py", "--total-timesteps", str(40 * 512), "--num-chunks", "40",
               "--eval-episodes", "0", "--no-progress", "--run-dir", str(run_dir)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((run_dir / "checkpoints").glob("[0-9]*")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted: stopped after update" in err and "--resume" in err, err
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    updates = [int(r.split(",")[0]) for r in rows[1:]]
    assert updates == list(range(1, len(updates) + 1))  # whole chunks, no gap, no duplicate
    done = subprocess.run([sys.executable, "algorithms/ppo.py", "--resume", str(run_dir), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    updates = [int(r.split(",")[0]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert updates == list(range(1, 41))


def test_an_n_step_longer_than_the_buffer_is_refused_and_a_long_one_traces_in_constant_time():
    """`--n-step 100000` used to unroll a Python loop of n steps at trace time (over 120 s of silence)."""
    import jax
    import jax.numpy as jnp

    from rlzoo.returns import n_step_window

    with pytest.raises(ConfigError, match=r"n_step=100000 is not allowed: must be <= the buffer's rows per env \(1000"):
        dqn.Config(n_step=100_000)
    n = 5_000
    start = time.perf_counter()
    jaxpr = jax.make_jaxpr(n_step_window)(jnp.ones((n, 4)), jnp.zeros((n, 4), bool), jnp.ones((n, 4), bool), 0.99)
    assert time.perf_counter() - start < 5.0 and len(jaxpr.eqns) < 50


def test_infinite_hyperparameters_and_seeds_beyond_32_bits_are_refused_naming_the_field(capsys):
    from rlzoo.trainer import check_hparams

    with pytest.raises(ConfigError, match=r"lr=inf is not allowed"):
        check_hparams(ppo.HParams(lr=float("inf")))
    assert "seed=100000000000000000000000 is not allowed: must fit in 32 bits" in cli_error(
        capsys, ppo, ["--seed", str(10**23), *TINY])


# --------------------------------------------------------------------------- faults, processes and the environment


def test_two_processes_racing_on_one_folder_one_is_refused_and_no_row_is_lost_or_doubled(tmp_path):
    run_dir = tmp_path / "raced"
    command = [sys.executable, "algorithms/ppo.py", "--total-timesteps", str(40 * 512), "--num-chunks", "40",
               "--eval-episodes", "0", "--no-progress", "--run-dir", str(run_dir)]
    racers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    results = [(racer.wait(timeout=300), racer.communicate()[1]) for racer in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refusal = next(err for code, err in results if code == 2)
    assert "Traceback" not in refusal and ("is in use by pid" in refusal or "already holds a run" in refusal), refusal
    updates = [int(row.split(",")[0]) for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert updates == list(range(1, 41))


def test_a_corrupted_newest_checkpoint_costs_one_line_and_resume_completes_the_run(finished_run, tmp_path, capsys):
    """The fallback once flooded stderr with tensorstore's `Event loop is closed` tracebacks (one per pending
    read of the damaged checkpoint)."""
    run_dir = tmp_path / "corrupted"
    shutil.copytree(finished_run, run_dir)
    for manifest in (run_dir / "checkpoints" / "2").rglob("manifest.ocdbt"):
        manifest.write_text("garbage")
    rows_before = (run_dir / "metrics.csv").read_text()
    run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=["--resume", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("error: checkpoint 2 cannot be read")], err
    assert len(err.splitlines()) == 1 and (run_dir / "checkpoints" / "corrupt-2").is_dir()
    assert (run_dir / "metrics.csv").read_text() == rows_before  # update 2's row, dropped and written again


def test_out_of_memory_during_a_run_is_one_line_and_exit_code_1(monkeypatch, tmp_path, capsys):
    import jax

    from rlzoo import runner

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1600000000000 bytes.")

    monkeypatch.setattr(runner, "run_experiment", exhausted)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=[*TINY, "--run-dir", str(tmp_path / "oom")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: out of memory on cpu (RESOURCE_EXHAUSTED")
    assert "num_envs" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine may have a usable GPU")
def test_jax_platforms_naming_a_backend_this_machine_lacks_is_one_clear_line():
    done = subprocess.run([sys.executable, "algorithms/ppo.py", "--env-id", "CartPole-v1"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cuda"}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: JAX_PLATFORMS='cuda': JAX cannot start that backend") and (
        "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1), done.stderr


def test_jax_enable_x64_runs_td3_and_batch_norm_pqn_in_float32():
    """Under JAX_ENABLE_X64 float64 observations and hyperparameters once broke TD3's `cond` (branches of two
    dtypes), BatchNorm's running statistics and S5's complex carry in `scan`, and CQL's Adam state. All 22 golden
    configurations were run under X64 by hand (2026-12-08); the two cheapest of the failing kinds run here."""
    script = textwrap.dedent("""
        import sys, tempfile, json
        from pathlib import Path
        import jax, numpy as np
        assert jax.config.jax_enable_x64
        sys.path.insert(0, ".")
        from tests.test_golden import run_case
        out = {name: run_case(name, Path(tempfile.mkdtemp())) for name in ("td3", "pqn_batch_norm")}
        print(json.dumps({name: all(np.isfinite(v).all() for k, v in r["metrics"].items() if not k.startswith("episode_"))
                          for name, r in out.items()}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_ENABLE_X64": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"td3": True, "pqn_batch_norm": True}


def test_the_watchdog_dumps_the_stacks_of_a_hung_chunk_into_the_run_folder_and_exits_3(tmp_path):
    """A real run whose env blocks forever in its 5th update (a gymnasium env stepped through a host callback,
    standing in for an XLA deadlock): the run's watchdog, with its floor lowered from 120 s to 1 s, must stop it."""
    run_dir = tmp_path / "hung"
    script = textwrap.dedent(f"""
        import functools, time
        import gymnasium
        from gymnasium.envs.classic_control import CartPoleEnv
        from rlzoo import runner, watchdog
        from rlzoo.algorithms import ppo

        class StuckCartPole(CartPoleEnv):
            steps = 0
            def step(self, action):
                StuckCartPole.steps += 1
                if StuckCartPole.steps > 4 * 128 * 4:  # the 5th update of 4 envs x 128 steps
                    stuck_in_a_blocking_call()
                return super().step(action)

        def stuck_in_a_blocking_call():
            time.sleep(600)

        gymnasium.register("StuckCartPole-v0", entry_point=StuckCartPole, max_episode_steps=500)
        runner.Watchdog = functools.partial(watchdog.Watchdog, floor_s=1.0)
        runner.run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=[
            "--env-id", "gymnasium/StuckCartPole-v0", "--num-envs", "4", "--num-steps", "128", "--total-timesteps",
            str(20 * 512), "--num-chunks", "20", "--eval-episodes", "0", "--no-progress", "--hang-factor", "2",
            "--run-dir", {str(run_dir)!r}])
    """)
    # PATH without gdb: attached to a JAX process it reads symbols for up to its 30 s limit (45 s of the suite).
    # The venv's folder stays on PATH, so a venv with py-spy still dumps native stacks here.
    path = os.pathsep.join([str(Path(sys.executable).parent), *(p for p in os.environ["PATH"].split(os.pathsep)
                                                                   if not (Path(p) / "gdb").exists())])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 3, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: no chunk finished for") and "the run looks hung" in message, done.stderr[-3000:]
    (dump,) = run_dir.glob("hang-*.txt")
    assert "stuck_in_a_blocking_call" in dump.read_text() and str(dump) in message
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").glob("[0-9]*")) != []  # the chunks before it stay


def test_the_watchdog_waits_for_a_first_chunk_and_scales_with_the_slowest():
    from rlzoo.watchdog import Watchdog

    dog = Watchdog(Path("."), factor=20.0, floor_s=120.0)
    assert dog.limit_s() is None  # nothing to compare the first chunk with
    dog.last_beat -= 10.0
    dog.beat()
    assert dog.limit_s() == pytest.approx(200.0, rel=1e-3)  # 20 x 10 s
    assert Watchdog(Path("."), factor=20.0, floor_s=120.0).limit_s() is None


def test_a_budget_set_by_a_preset_or_the_defaults_is_not_warned_about(capsys):
    config = ppo.Config(total_timesteps=1023)
    trainer = ppo.make_train(config)
    warn_if_budget_is_cut(config, trainer, "preset")
    warn_if_budget_is_cut(config, trainer, "default")
    assert capsys.readouterr().err == ""
