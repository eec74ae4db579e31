"""Facts about rlzoo.report: the estimators of Agarwal et al. (2021) against hand counts
and brute force, and loading/reporting from small fake run folders (no training)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlzoo import report, stats

FAST = 300  # bootstrap resamples in tests


# ---------------------------------------------------------------- estimators


def test_aggregates_of_a_known_matrix_equal_hand_computed_values():
    scores = np.array([[0, 10, 100], [1, 11, 100], [2, 12, 100], [3, 13, 104]], dtype=float)
    # per-task means 1.5, 11.5, 101; pooled sorted values, minus 3 lowest and 3 highest: 3, 10, 11, 12, 13, 100
    assert stats.aggregate_metrics(scores) == pytest.approx({"mean": 38.0, "median": 11.5, "iqm": 149 / 6})
    assert stats.aggregate_iqm([1.0, 2.0, 3.0, 4.0, 50.0]) == pytest.approx(3.0)  # 5 values: keep the middle 3
    assert stats.aggregate_metrics([[1.0], [7.0]], gamma=5.0)["optimality_gap"] == pytest.approx(2.0)


def test_iqm_trims_like_scipy_trim_mean():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for runs, tasks in [(1, 1), (3, 1), (5, 3), (7, 2), (10, 4)]:
        scores = rng.normal(size=(runs, tasks))
        assert stats.aggregate_iqm(scores) == pytest.approx(scipy_stats.trim_mean(scores, 0.25, axis=None))


def test_bad_score_matrices_are_rejected():
    for bad in ([[1.0, float("nan")]], [], np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            stats.aggregate_metrics(bad)


def test_stratified_bootstrap_ci_contains_the_estimate_and_narrows_with_more_runs():
    widths = []
    for runs in (5, 50):  # the same spread of values per task, only more runs
        scores = np.linspace(-1.0, 1.0, runs)[:, None] ** 3 + np.array([0.0, 5.0, 10.0])
        for name, fn in stats.metric_functions().items():
            low, high = stats.stratified_bootstrap_ci(scores, fn, num_resamples=FAST)
            assert low <= fn(scores) <= high, (runs, name)
        intervals = stats.aggregate_intervals(scores, num_resamples=FAST)
        for point, low, high in intervals.values():
            assert low <= point <= high
        widths.append({name: high - low for name, (_, low, high) in intervals.items()})
    for name in widths[0]:
        assert widths[1][name] < 0.6 * widths[0][name], name


def test_bootstrap_is_reproducible_and_confidence_widens_the_interval():
    scores = np.random.default_rng(2).normal(size=(8, 2))
    ci = stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, num_resamples=FAST, seed=3)
    assert ci == stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, num_resamples=FAST, seed=3)
    low99, high99 = stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, FAST, confidence=0.99, seed=3)
    assert low99 <= ci[0] and ci[1] <= high99
    with pytest.raises(ValueError, match="confidence"):
        stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, confidence=1.5)


def test_stratified_resampling_never_mixes_tasks():
    rng = np.random.default_rng(4)
    ranges = [(0.0, 1.0), (10.0, 11.0), (100.0, 101.0)]
    scores = np.stack([rng.uniform(lo, hi, size=6) for lo, hi in ranges], axis=1)
    duplicates = 0
    for _ in range(200):
        resample = stats.stratified_resample(scores, rng)
        assert resample.shape == scores.shape
        for task, (lo, hi) in enumerate(ranges):
            assert np.isin(resample[:, task], scores[:, task]).all()
            assert ((lo <= resample[:, task]) & (resample[:, task] < hi)).all()
        duplicates += len(np.unique(resample[:, 0])) < len(scores)
    assert duplicates > 100  # runs really are drawn with replacement

    def checked_mean(resample):  # the bootstrap path itself also stays within tasks
        for task, (lo, hi) in enumerate(ranges):
            assert ((lo <= resample[:, task]) & (resample[:, task] < hi)).all()
        return resample.mean()

    stats.stratified_bootstrap_ci(scores, checked_mean, num_resamples=100)


def brute_force_improvement(x, y):
    per_task = []
    for task in range(x.shape[1]):
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x[:, task] for b in y[:, task])
        per_task.append(wins / (len(x) * len(y)))
    return float(np.mean(per_task))


def test_probability_of_improvement_edge_cases_and_brute_force():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3))
    assert stats.probability_of_improvement(x + 100.0, x) == 1.0
    assert stats.probability_of_improvement(x, x + 100.0) == 0.0
    assert stats.probability_of_improvement(x, x) == 0.5
    assert stats.probability_of_improvement_ci(x + 100.0, x, num_resamples=FAST) == (1.0, 1.0)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 5, size=(7, 3)).astype(float)  # small integers: many ties
        b = rng.integers(0, 5, size=(4, 3)).astype(float)
        p = stats.probability_of_improvement(a, b)
        assert p == pytest.approx(brute_force_improvement(a, b))
        assert p + stats.probability_of_improvement(b, a) == pytest.approx(1.0)
        low, high = stats.probability_of_improvement_ci(a, b, num_resamples=FAST)
        assert 0.0 <= low <= p <= high <= 1.0
    with pytest.raises(ValueError, match="same tasks"):
        stats.probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 1)))


def test_performance_profile_equals_hand_counts_and_is_non_increasing():
    scores = np.array([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0]])
    profile = stats.performance_profile(scores, [0.0, 1.0, 2.5, 6.0, 10.0])
    # task 0 above tau: 3, 2, 1, 0, 0 of 3; task 1: 3, 3, 3, 1, 0 of 3 (strictly above)
    np.testing.assert_allclose(profile, [1.0, 5 / 6, 2 / 3, 1 / 6, 0.0])

    random_scores = np.random.default_rng(6).normal(size=(10, 4))
    thresholds = np.linspace(-3, 3, 61)
    profile = stats.performance_profile(random_scores, thresholds)
    assert np.all(np.diff(profile) <= 0)
    low, high = stats.performance_profile_ci(random_scores, thresholds, num_resamples=FAST)
    assert low.shape == high.shape == thresholds.shape
    assert np.all((0 <= low) & (low <= high) & (high <= 1))
    assert np.all(np.diff(low) <= 0) and np.all(np.diff(high) <= 0)


# ---------------------------------------------------------------- fake run folders


def write_run(run_dir: Path, algo: str, env_id: str, per_seed: dict, seed: int = 0) -> Path:
    """A run folder as rlzoo.runner writes it: config.json, summary.json and metrics.csv."""
    run_dir.mkdir(parents=True)
    labels = list(per_seed)
    num_seeds = len(next(iter(per_seed.values())))
    (run_dir / "config.json").write_text(json.dumps({
        "algo": algo, "config": {"env_id": env_id, "total_timesteps": 1000}, "hparams": {"lr": 1e-3},
        "run": {"seed": seed, "num_seeds": num_seeds, "sweep": []}, "configs": labels}))
    (run_dir / "summary.json").write_text(json.dumps({
        "final_return": {k: None if None in v else float(np.mean(v)) for k, v in per_seed.items()},
        "final_return_per_seed": per_seed, "env_steps": 1000, "num_seeds": num_seeds, "configs": labels}))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["update", "env_steps", "config", "seed", "episode_return"])
        for label, values in per_seed.items():
            for s, value in enumerate(values):
                writer.writerow([1, 1000, label, s, value])
    return run_dir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "ppo_cartpole", "ppo", "CartPole-v1", {"default": [100.0, 200.0, 300.0]})
    write_run(root / "ppo_acrobot", "ppo", "Acrobot-v1", {"default": [-90.0, -80.0, -70.0]})
    for env_id, offset in (("CartPole-v1", 0.0), ("Acrobot-v1", -500.0)):
        write_run(root / f"dqn_sweep_{env_id}", "dqn", env_id,
                  {"lr=0.001": [offset + 1.0, offset + 2.0, offset + 3.0],
                   "lr=0.0003": [offset + 4.0, offset + 5.0, offset + 6.0]})
    return root


def test_load_runs_builds_one_matrix_per_label_with_tasks_by_env_id(runs):
    scores, tasks = report.load_run_table([runs])
    assert tasks == ["Acrobot-v1", "CartPole-v1"]
    assert list(scores) == ["dqn lr=0.001", "dqn lr=0.0003", "ppo"]
    np.testing.assert_array_equal(scores["ppo"], [[-90.0, 100.0], [-80.0, 200.0], [-70.0, 300.0]])
    np.testing.assert_array_equal(scores["dqn lr=0.0003"], [[-496.0, 4.0], [-495.0, 5.0], [-494.0, 6.0]])
    single = report.load_runs([runs / "ppo_cartpole", runs / "ppo_acrobot", runs / "ppo_cartpole"])
    assert list(single) == ["ppo"]
    np.testing.assert_array_equal(single["ppo"], scores["ppo"])  # the repeated folder is read once


def test_load_runs_adds_runs_of_the_same_task_and_truncates_unequal_counts(runs, tmp_path):
    more = write_run(tmp_path / "more" / "ppo_cartpole_seed1", "ppo", "CartPole-v1", {"default": [400.0]}, seed=1)
    with pytest.warns(UserWarning, match="run counts differ.*Acrobot-v1: 3, CartPole-v1: 4.*first 3"):
        scores = report.load_runs([runs / "ppo_cartpole", runs / "ppo_acrobot", more])
    np.testing.assert_array_equal(scores["ppo"][:, 1], [100.0, 200.0, 300.0])


def test_load_runs_keeps_only_shared_tasks_and_rejects_disjoint_ones(runs, tmp_path):
    other = write_run(tmp_path / "a2c", "a2c", "Pendulum-v1", {"default": [1.0, 2.0]})
    with pytest.raises(ValueError, match="share no task.*a2c: Pendulum-v1"):
        report.load_runs([runs / "ppo_cartpole", other])
    cart = write_run(tmp_path / "a2c_cart", "a2c", "CartPole-v1", {"default": [1.0, 2.0]})
    with pytest.warns(UserWarning, match="ppo: tasks Acrobot-v1 dropped"):
        scores = report.load_runs([runs / "ppo_cartpole", runs / "ppo_acrobot", cart])
    assert scores["ppo"].shape == (3, 1) and scores["a2c"].shape == (2, 1)


def test_load_runs_skips_unfinished_runs_with_a_warning(runs):
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "config.json").write_text("{}")
    with pytest.warns(UserWarning, match="unfinished.*skipped"):
        assert set(report.load_runs([runs])) == {"ppo", "dqn lr=0.001", "dqn lr=0.0003"}


def test_load_runs_rejects_bad_input_naming_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"{missing}: no such folder"):
        report.load_runs([missing])
    (tmp_path / "empty" / "child").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty: no summary.json"):
        report.load_runs([tmp_path / "empty"])
    none_run = write_run(tmp_path / "none_run", "ppo", "CartPole-v1", {"default": [1.0, None]})
    with pytest.raises(ValueError, match="none_run.*summary.json.*'default'.*NaN/None"):
        report.load_runs([none_run])
    nan_run = write_run(tmp_path / "nan_run", "ppo", "CartPole-v1", {"default": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="nan_run.*NaN/None"):
        report.load_runs([nan_run])
    broken = write_run(tmp_path / "broken", "ppo", "CartPole-v1", {"default": [1.0]})
    (broken / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.*summary.json.*cannot read JSON"):
        report.load_runs([broken])


# ---------------------------------------------------------------- report and CLI


def test_write_report_with_optimality_gap(tmp_path):
    scores = {"a": np.array([[0.2, 0.9], [0.4, 1.2]]), "b": np.array([[0.1, 0.5], [0.3, 0.6], [0.2, 0.4]])}
    text = report.write_report(scores, tmp_path / "out", num_resamples=FAST, gamma=1.0)
    assert "optimality_gap" in text and "| a | b |" in text
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.md", "aggregates.png", "performance_profile.png"}


def test_cli_writes_the_report_and_both_plots(runs, tmp_path, capsys):
    out = tmp_path / "report_dir"
    report.main([str(runs / "ppo_cartpole"), str(runs / "ppo_acrobot"), str(runs / "dqn_sweep_CartPole-v1"),
                 str(runs / "dqn_sweep_Acrobot-v1"), "--out", str(out), "--num-resamples", str(FAST)])
    printed = capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    assert markdown in printed
    assert "| ppo | 3 x 2 |" in markdown and "Acrobot-v1, CartPole-v1" in markdown
    assert "| ppo | dqn lr=0.001 | 1.00 [1.00, 1.00] |" in markdown  # probability of improvement per pair
    assert "| dqn lr=0.001 | dqn lr=0.0003 | 0.00 [0.00, 0.00] |" in markdown
    assert markdown.count("\n| ppo | dqn") == 2 and markdown.count("\n| dqn") == 2 + 1
    for png in ("aggregates.png", "performance_profile.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_exits_2_with_a_clear_message_on_a_missing_path(tmp_path):
    missing = tmp_path / "no_such_run"
    result = subprocess.run([sys.executable, "-m", "rlzoo.report", str(missing), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: no such folder"
    assert not (tmp_path / "out").exists()
