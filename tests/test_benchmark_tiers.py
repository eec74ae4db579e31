"""Facts about the one benchmark command: the smoke tier runs every benchmark end to end and writes one results
file, a second call resumes instead of rerunning, and a failing job is recorded without stopping the tier."""

import json

import numpy as np
import pytest

from rlzoo.benchmarks import bench

BENCHMARKS = {"learn", "env_speed", "sequence_speed", "offline_pace", "sweep_vs_separate", "cli_overhead", "parity"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiers")
    return out, bench.run_tier("smoke", out)


def test_the_smoke_tier_runs_every_benchmark_and_records_the_machine(smoke):
    out, payload = smoke
    jobs = payload["jobs"]
    assert {r["benchmark"] for r in jobs.values()} == BENCHMARKS
    assert len(jobs) == len(bench.smoke_jobs()) and not payload["not_reached"]
    assert not [name for name, r in jobs.items() if "error" in r]
    assert payload["device"]["platform"] == "cpu" and payload["versions"]["jax"] != "unknown"
    summary = (out / "smoke" / "summary.md").read_text()
    for r in jobs.values():
        assert f"| {r['unit']} |" in summary


def test_the_smoke_results_are_measurements_of_the_right_shape(smoke):
    jobs = smoke[1]["jobs"]
    for r in (r for r in jobs.values() if r["benchmark"] in ("learn", "parity")):
        assert len(r["scores"]) == r["sizes"]["seeds"] and np.isfinite(r["scores"]).all()
        low, high = r["score_iqm_ci"][1:]
        assert low <= r["score_iqm_ci"][0] <= high
        assert r["env_steps_per_s"] == pytest.approx(r["env_steps_per_seed"] * r["sizes"]["seeds"] / r["run_s"])
    sweep = next(r for r in jobs.values() if r["benchmark"] == "sweep_vs_separate")
    assert sweep["same_results"], "the vmapped sweep and the separate runs must train the same members"
    cli = next(r for r in jobs.values() if r["benchmark"] == "cli_overhead")
    assert cli["rounds"][0]["cli_cached"]["compile_cache"]["misses"] == 0  # the second run compiled nothing
    for r in (r for r in jobs.values() if r["benchmark"] == "env_speed"):
        assert r["num_envs"] == r["sizes"]["num_envs"] and r["env_steps_per_s"] > 0
    for r in (r for r in jobs.values() if r["benchmark"] == "offline_pace"):
        assert r["minutes_per_1m_updates"] == pytest.approx(r["run_s"] / r["updates"] * 1e6 / 60)


def test_a_second_call_resumes_from_the_job_folders_instead_of_rerunning(smoke):
    out, payload = smoke
    stamps = {name: r["finished"] for name, r in payload["jobs"].items()}
    again = bench.run_tier("smoke", out, only=("learn__PPO",))
    assert {name: again["jobs"][name]["finished"] for name in stamps} == stamps


def test_a_failing_job_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    def broken(folder):
        raise ValueError("no such env")

    jobs = [bench.Job("learn", "broken/task", {"steps": 1}, broken),
            bench.Job("learn", "fine/task", {"steps": 1}, lambda folder: {"scores": [1.0], "score_iqm_ci": [1, 1, 1],
                                                                           "env_steps_per_s": 1.0, "compile_s": 0.0,
                                                                           "run_s": 1.0})]
    monkeypatch.setitem(bench.TIER_JOBS, "smoke", lambda: jobs)
    payload = bench.run_tier("smoke", tmp_path)
    assert "ValueError('no such env')" in payload["jobs"]["learn__broken-task"]["error"]
    assert payload["jobs"]["learn__fine-task"]["scores"] == [1.0]
    assert "failed: ValueError" in (tmp_path / "smoke" / "summary.md").read_text()


@pytest.mark.parametrize("tier", bench.TIERS)
def test_every_learn_job_of_every_tier_has_settings_its_algorithm_accepts(tier):
    """The jobs the smoke tier does not train are built (Config and HParams validated) without training."""
    jobs = [job for job in bench.TIER_JOBS[tier]() if job.benchmark == "learn" or job.unit.endswith("/rlzoo")]
    assert jobs
    for job in jobs:
        sizes = job.sizes
        _, config, _ = bench.learn_settings(sizes["algo"], sizes["task"], sizes["steps"], sizes.get("config"),
                                            sizes.get("hparams"))
        assert config.env_id == sizes["task"] and config.total_timesteps == sizes["steps"]


def test_the_gpu_tier_covers_every_benchmark_and_a_deadline_leaves_the_rest_for_later(tmp_path, monkeypatch):
    gpu = bench.gpu_jobs()
    # Not parity: a lent accelerator reaches no package index, so the peer venv cannot be built there.
    assert {job.benchmark for job in gpu} == BENCHMARKS - {"parity"}
    learn = {job.unit for job in gpu if job.benchmark == "learn"}
    assert {f"PPO/{game}" for game in bench.MINATAR} <= learn and "sac/brax/hopper" in learn
    monkeypatch.setitem(bench.TIER_JOBS, "gpu", lambda: [bench.Job("learn", f"job{i}", {}, lambda f: {})
                                                         for i in range(3)])
    payload = bench.run_tier("gpu", tmp_path, max_minutes=-1.0)  # the deadline has passed before the first job
    assert payload["not_reached"] == ["learn__job0", "learn__job1", "learn__job2"] and not payload["jobs"]
    assert json.loads((tmp_path / "gpu" / "results.json").read_text())["not_reached"] == payload["not_reached"]


def test_the_parity_summary_sets_ours_beside_the_reference_with_p_of_improvement():
    ours, reference = [3.0, 4.0, 5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0, 5.0]
    wins = sum((o > r) + 0.5 * (o == r) for o in ours for r in reference) / (len(ours) * len(reference))
    half = dict(benchmark="parity", score_iqm_ci=[5.0, 4.0, 6.0])
    results = [{**half, "unit": "PQN/Breakout-MinAtar/rlzoo", "scores": ours, "env_steps_per_s": 12_000.0},
               {**half, "unit": "PQN/Breakout-MinAtar/purejaxql", "scores": reference, "env_steps_per_s": 9_000.0}]
    row = bench.parity_pairs(results)[-1]
    assert row.startswith("| PQN/Breakout-MinAtar | purejaxql | 5.0 [4.0, 6.0] |")
    assert f"| {wins:.2f} [" in row and row.endswith("| 12,000 | 9,000 |")
    assert bench.parity_pairs(results[:1]) == []  # a pair without its reference is not reported


def test_a_reference_run_without_its_checkout_says_which_variable_to_set(tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.touch()
    monkeypatch.setattr(bench, "PEER_PYTHON", python)
    monkeypatch.delenv("PUREJAXQL_DIR", raising=False)
    with pytest.raises(RuntimeError, match="PUREJAXQL_DIR=None is not a folder.*purejaxql"):
        bench.peer(bench.PEERS["PQN"], {})(tmp_path)
    monkeypatch.setattr(bench, "PEER_PYTHON", tmp_path / "missing")
    with pytest.raises(RuntimeError, match="make bench-peer"):
        bench.peer(bench.PEERS["PQN"], {})(tmp_path)


def test_a_peer_given_our_hyperparameters_accepts_each_of_them_as_a_flag():
    """PureJaxRL's PPO has no MinAtar config: the parity job passes PPO_MINATAR's values, and the peer script
    must know every one of them (argparse refuses an unknown flag only when the peer runs, hours later)."""
    import subprocess
    import sys

    flags = bench.hyperparameter_flags(bench.PPO_MINATAR)
    assert flags == {"num-envs": 64, "num-steps": 128, "num-epochs": 4, "num-minibatches": 8, "lr": 5e-3,
                     "ent-coef": 1e-4, "clip-eps": 0.2, "max-grad-norm": 0.5}
    reference = bench.PEERS["PPO"]
    assert reference.given_hyperparameters and not bench.PEERS["PQN"].given_hyperparameters
    script = bench.BENCHMARKS_DIR / reference.script
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert all(f"--{name}" in usage for name in flags), usage
    assert reference.flag in usage
