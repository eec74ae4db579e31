"""Facts about offline training: IQL beats BC on Pendulum medium data, chunks stay on device, runs keep the contract."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import datasets
from rlzoo.algorithms import bc, iql
from rlzoo.trainer import ConfigError
from rlzoo.datasets import DatasetError
from rlzoo.runner import run_cli
from rlzoo.sweep import seed_keys

# 5,000 gradient steps with the paper's networks (2x256) and batch 256, then 20 evaluation episodes.
BUDGET = {"total_updates": 5_000, "steps_per_update": 2_500, "episodes_per_eval": 20}


def train_two_seeds(module, dataset_path):
    trainer = module.make_train(module.Config(dataset=dataset_path, **BUDGET))
    _, metrics = jax.jit(jax.vmap(trainer, in_axes=(0, None)))(seed_keys(0, 2), module.HParams())
    return jax.device_get(metrics)


@pytest.fixture(scope="module")
def bc_and_iql_on_pendulum_medium(pendulum_offline):
    path = pendulum_offline.written["medium"]["path"]
    return {"bc": train_two_seeds(bc, path), "iql": train_two_seeds(iql, path)}


@pytest.mark.slow
def test_iql_beats_bc_on_pendulum_medium_on_each_of_two_seeds(bc_and_iql_on_pendulum_medium, pendulum_offline):
    """IQL scores more than BC on each seed (same data, budget, seeds). References: random actions 0 (rolled out
    independently in test_offline_baselines.py), untrained actors -61 to -15 (IQL) and -72 to -44 (BC) on 4 seeds
    at 2x64, the data's own policy about 49, BC 41-48, IQL about 119. Catches an IQL no better than cloning."""
    bc_score = bc_and_iql_on_pendulum_medium["bc"]["normalized_score"][:, -1]
    iql_score = bc_and_iql_on_pendulum_medium["iql"]["normalized_score"][:, -1]
    medium = pendulum_offline.written["medium"]
    print(f"normalised score after 5,000 steps: BC {bc_score.round(1)}, IQL {iql_score.round(1)}; the medium "
          f"data's own {datasets.normalized_score(medium, medium['policy_return']):.1f}")
    assert (iql_score > bc_score).all(), (iql_score, bc_score)


@pytest.mark.slow
def test_bc_imitates_the_medium_policy_well_above_random(bc_and_iql_on_pendulum_medium):
    """BC scores > 20 on each seed and its loss falls. References: random actions 0, an untrained actor -72 to -44
    (4 seeds, 2x64), the data's own policy about 49. Catches a BC that does not fit the data's actions."""
    bc_metrics = bc_and_iql_on_pendulum_medium["bc"]
    assert (bc_metrics["normalized_score"][:, -1] > 20.0).all(), bc_metrics["normalized_score"]
    assert (bc_metrics["actor_loss"][:, -1] < bc_metrics["actor_loss"][:, 0]).all()
    assert np.isfinite(bc_and_iql_on_pendulum_medium["iql"]["critic_loss"]).all()


def test_a_chunk_of_gradient_steps_runs_with_host_transfers_disallowed(pendulum_offline):
    """The update is one jitted program: data, sampling, gradient steps and evaluation all stay on the device."""
    config = iql.Config(dataset=pendulum_offline.written["medium"]["path"], total_updates=20, steps_per_update=10,
                        episodes_per_eval=2, hidden_sizes=(16,))
    trainer = iql.make_train(config)
    hparams = jax.device_put(jax.tree.map(jnp.float32, iql.HParams()))
    data = jax.device_put(trainer.data)
    state = jax.jit(trainer.init)(jax.device_put(jax.random.PRNGKey(0)), hparams, data)
    run = jax.jit(lambda s, hp, d: trainer.run(s, hp, 2, d))
    compiled = run.lower(state, hparams, data).compile()
    assert "callback" not in compiled.as_text() and "outfeed" not in compiled.as_text()
    with jax.transfer_guard("disallow"):
        state, metrics = compiled(state, hparams, data)
        state, metrics = compiled(state, hparams, data)
    assert int(jax.device_get(state.update_index)) == 4
    assert jax.device_get(metrics["env_steps"]).tolist() == [30, 40]  # gradient steps


def test_bc_keeps_the_run_folder_contract_with_gradient_steps_as_env_steps(pendulum_offline, tmp_path):
    run_dir = tmp_path / "bc"
    summary = run_cli("bc", bc.Config, bc.HParams, bc.make_train, args=[
        "--dataset", pendulum_offline.written["medium"]["path"], "--total-updates", "200", "--steps-per-update",
        "100", "--num-chunks", "2", "--hidden-sizes", "32", "32", "--episodes-per-eval", "2", "--eval-episodes", "2",
        "--num-seeds", "2",
        "--no-progress", "--run-dir", str(run_dir)])
    for name in ("config.json", "metrics.csv", "summary.json", "eval.csv", "learning_curve.png"):
        assert (run_dir / name).exists(), name
    assert summary["env_steps"] == 200 and np.isfinite(summary["final_eval_return"])
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"normalized_score", "actor_loss", "episode_return"} <= set(rows[0])
    assert sorted({int(r["env_steps"]) for r in rows}) == [100, 200]


def test_the_env_id_is_read_from_the_dataset_and_bad_settings_are_clear_errors(pendulum_offline, tmp_path):
    path = pendulum_offline.written["medium"]["path"]
    assert iql.Config(dataset=path).env_id == "Pendulum-v1"
    assert bc.Config(dataset=path, env_id="none").env_id == "none"
    with pytest.raises(ConfigError, match="env_id='CartPole-v1' is not allowed: its observations"):
        bc.make_train(bc.Config(dataset=path, env_id="CartPole-v1"))
    with pytest.raises(ConfigError, match=r"total_updates=10 is not allowed: must be >= steps_per_update \(100\)"):
        iql.Config(dataset=path, total_updates=10, steps_per_update=100)
    with pytest.raises(DatasetError, match="missing.hdf5: no such file or folder"):
        iql.make_train(iql.Config(dataset=str(tmp_path / "missing.hdf5")))
    trainer = bc.make_train(bc.Config(dataset=path, env_id="none", total_updates=10, steps_per_update=10))
    assert trainer.act is None and trainer.eval_env is None


def test_the_expectile_loss_is_minimised_by_the_expectile():
    """IQL eq. 5: the minimiser of E[L2_tau(x - v)] is the tau-expectile, above the mean for tau > 0.5."""
    x = jnp.asarray(np.random.default_rng(0).exponential(size=1000), jnp.float32)

    def expectile(tau, low=0.0, high=10.0):  # tau E[(x - v)+] = (1 - tau) E[(v - x)+], by bisection
        for _ in range(60):
            v = (low + high) / 2
            balance = tau * np.maximum(x - v, 0).mean() - (1 - tau) * np.maximum(v - x, 0).mean()
            low, high = (v, high) if balance > 0 else (low, v)
        return v

    gradient = jax.grad(lambda v, tau: iql.expectile_loss(x - v, tau).mean())
    for tau in (0.5, 0.7, 0.9):
        v = expectile(tau)
        assert abs(float(gradient(jnp.float32(v), tau))) < 1e-4
    assert expectile(0.5) == pytest.approx(float(x.mean()), rel=1e-4)
    assert expectile(0.7) > float(x.mean())
    np.testing.assert_allclose(iql.expectile_loss(jnp.array([-2.0, 2.0]), 0.7), [0.3 * 4, 0.7 * 4], rtol=1e-6)


def test_the_benchmark_trains_seeds_in_groups_as_it_does_in_one_vmap(pendulum_offline, capsys):
    """bench_offline's --seeds-per-program runs the same seeds' keys through a smaller program, one group after
    another: the trained parameters match the all-seeds vmap (up to float reassociation)."""
    from rlzoo.benchmarks import bench_offline as bench

    trainer = bc.make_train(bc.Config(dataset=pendulum_offline.written["medium"]["path"], total_updates=40,
                                      steps_per_update=20, episodes_per_eval=0))
    together = bench.train_members(trainer, bc.HParams(), 4, 40, 20)[0]
    capsys.readouterr()
    in_pairs = bench.train_members(trainer, bc.HParams(), 4, 40, 20, seeds_per_program=2)[0]
    assert "seeds 0-1, chunk 2/2" in capsys.readouterr().out  # and not "seeds 0-3": two groups of two
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(in_pairs)):
        assert a.shape == b.shape and a.shape[0] == 4
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    first_layer = jax.tree.leaves(together.learner.params)[0]
    assert not np.allclose(first_layer[0], first_layer[1])  # the seeds differ
    with pytest.raises(ValueError, match="must divide"):
        bench.train_members(trainer, bc.HParams(), 4, 40, 20, seeds_per_program=3)
