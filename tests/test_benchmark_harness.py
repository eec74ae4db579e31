"""The benchmark harness keeps one results layout and one merge policy, and its tables read that layout."""

from __future__ import annotations

import json

import numpy as np

from rlzoo.benchmarks.harness import ResultsFile, score_table
from rlzoo.stats import aggregate_intervals


def test_a_result_replaces_its_own_entry_and_keeps_every_other(tmp_path):
    path = tmp_path / "scores.json"
    results = ResultsFile(path, {"steps": 100, "seeds": 2})
    results.record("DQN", "CartPole-v1", scores=[1.0, 2.0], times_s={"run_s": 3.0})
    results.record("i-QN", "CartPole-v1", scores=[4.0, 5.0])
    results.record("DQN", "Acrobot-v1", scores=[-9.0, -8.0])
    results.record("DQN", "CartPole-v1", scores=[6.0, 7.0], times_s={"run_s": 4.0})
    data = json.loads(path.read_text())
    assert data["steps"] == 100 and data["seeds"] == 2 and "machine" in data and "jax" in data
    assert data["scores"] == {"DQN": {"CartPole-v1": [6.0, 7.0], "Acrobot-v1": [-9.0, -8.0]},
                              "i-QN": {"CartPole-v1": [4.0, 5.0]}}
    assert data["times_s"] == {"DQN": {"CartPole-v1": {"run_s": 4.0}}}


def test_the_file_is_reread_before_each_write_so_side_by_side_runs_keep_each_others_results(tmp_path):
    path = tmp_path / "scores.json"
    first, second = ResultsFile(path, {"updates": 10}), ResultsFile(path, {"updates": 10})
    first.record("BC", "hopper:medium", scores=[1.0])
    second.record("IQL", "hopper:medium", scores=[2.0])
    first.record("BC", "hopper:expert", scores=[3.0])
    assert first.scores() == {"BC": {"hopper:medium": [1.0], "hopper:expert": [3.0]}, "IQL": {"hopper:medium": [2.0]}}


def test_a_file_at_another_budget_is_replaced_but_its_note_is_kept(tmp_path, capsys):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"note": "run on a loaded machine", "steps": 50, "scores": {"SAC": {"hopper": [1.0]}}}))
    results = ResultsFile(path, {"steps": 100})
    assert results.read() == {"note": "run on a loaded machine"}
    assert "another budget" in capsys.readouterr().err
    results.record("TD3", "hopper", scores=[2.0])
    results.update(settings={"TD3": {"tau": 0.005}}, datasets="datasets")
    data = json.loads(path.read_text())
    assert list(data)[0] == "note" and data["note"] == "run on a loaded machine"
    assert data["scores"] == {"TD3": {"hopper": [2.0]}} and data["steps"] == 100
    assert data["settings"] == {"TD3": {"tau": 0.005}} and data["datasets"] == "datasets"


def test_the_score_table_shows_each_labels_iqm_and_interval_per_task():
    scores = {"A": {"t1": [1.0, 2.0, 3.0, 4.0]}, "B": {"t1": [5.0, 5.0, 5.0, 5.0], "t2": [0.0, 1.0, 2.0, 3.0]}}
    table = score_table(scores, "task", row_names={"t2": "t2 (1e5 steps)"}).splitlines()
    assert table[0] == "| task | A | B |" and len(table) == 4
    point, low, high = aggregate_intervals(np.array([[1.0], [2.0], [3.0], [4.0]]))["iqm"]
    assert table[2] == f"| t1 | {point:.1f} [{low:.1f}, {high:.1f}] | 5.0 [5.0, 5.0] |"
    assert table[3].startswith("| t2 (1e5 steps) |  | ")
