"""Bad input across the algorithm files (issue 24): each case runs the command line in-process and asserts the
exit code (2), one clear message naming the field (no traceback), and that no run folder was left behind.

The faults beside them (concurrent writers, kills, corrupt checkpoints, signals, hangs, the environment) are in
test_reliability.py and test_checkpoints.py.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

from rlzoo import datasets
from rlzoo.runner import run_cli

# (algorithm file, flags, the field the message must name). DATA/ is the folder of the `bad_data` fixture.
CASES = [
    # sizes and budgets
    ("ppo", ["--num-envs", "0"], "num_envs"),
    ("ppo", ["--num-minibatches", "3"], "num_minibatches"),
    ("ppo", ["--total-timesteps", "0"], "total_timesteps"),
    ("ppo", ["--total-timesteps", str(10**10)], "total_timesteps"),  # would wrap the int32 step counter
    ("bc", ["--dataset", "DATA/fine.hdf5", "--total-updates", str(10**10)], "total_updates"),
    ("ppo", ["--hidden-sizes", "0"], "hidden_sizes"),
    ("ppo_s5", ["--state-size", "3"], "state_size"),
    ("dqn", ["--batch-size", "0"], "batch_size"),
    ("dqn", ["--num-envs", "100000000"], "buffer_size"),  # "buffer_size=10000 ...: must be >= num_envs (1e8)"
    ("dqn", ["--n-step", "100000"], "n_step"),
    ("iqn", ["--num-heads", "0"], "num_heads"),
    ("isac", ["--num-heads", "0"], "num_heads"),
    ("spr", ["--k-steps", "0"], "k_steps"),
    ("zp", ["--latent-dim", "0"], "latent_dim"),
    ("sac", ["--utd-ratio", "0"], "utd_ratio"),
    ("cql", ["--num-sampled-actions", "0"], "num_sampled_actions"),
    ("csve", ["--model-members", "0"], "model_members"),
    ("bc", ["--total-updates", "10", "--steps-per-update", "100"], "total_updates"),
    # memory, estimated from shapes before anything is allocated
    ("dqn", ["--buffer-size", "100000000000"], "buffer_size"),
    ("ppo", ["--eval-episodes", "1000000000"], "eval_episodes"),
    # no silent no-ops
    ("dqn", ["--total-timesteps", "2000"], "learning_starts"),
    ("sac", ["--learning-starts", "100000", "--total-timesteps", "20000"], "learning_starts"),
    ("ppo", ["--sweep", "lr=1e-4,0.0001"], "lr"),
    # hyperparameters out of range, infinite or NaN
    ("ppo", ["--lr", "-1"], "lr"),
    ("ppo", ["--gamma", "1.5"], "gamma"),
    ("ppo", ["--clip-eps", "nan"], "clip_eps"),
    ("td", ["--lam", "2"], "lam"),
    ("pqn", ["--lam", "1.5"], "lam"),
    ("dqn", ["--eps-start", "1.5"], "eps_start"),
    ("sac", ["--tau", "2"], "tau"),
    ("td3", ["--policy-delay", "0"], "policy_delay"),
    ("td3", ["--exploration-noise", "-1"], "exploration_noise"),
    ("iql", ["--expectile", "1.5"], "expectile"),
    ("td3_bc", ["--alpha", "-1"], "alpha"),
    # choices
    ("ppo", ["--activation", "swish2"], "activation"),
    ("ppo_s5", ["--sequence-model", "transformer"], "sequence_model"),
    ("pqn", ["--norm", "group"], "norm"),
    ("dqn", ["--loss", "l3"], "loss"),
    ("ppo", ["--log", "nosuchtracker"], "log"),
    ("ppo", ["--preset", "sac/pendulum"], "preset"),
    ("ppo", ["--preset", "nonexistent"], "preset"),
    # environments that do not exist or do not fit the algorithm
    ("ppo", ["--env-id", "CartPol-v1"], "env_id"),
    ("ppo", ["--env-id", "brax/nosuchrobot"], "env_id"),
    ("pqn", ["--env-id", "Pendulum-v1"], "env_id"),
    ("dqn", ["--env-id", "Pendulum-v1"], "env_id"),
    ("spr", ["--env-id", "CartPole-v1"], "env_id"),
    ("sac", ["--env-id", "CartPole-v1"], "env_id"),
    ("td", ["--value-fn", "tabular", "--env-id", "CartPole-v1"], "value_fn"),
    # run options
    ("ppo", ["--sweep", "no_such=1,2"], "no_such"),
    ("ppo", ["--sweep", "num_envs=4,8"], "num_envs"),
    ("ppo", ["--num-seeds", "0"], "num_seeds"),
    ("ppo", ["--seed", str(10**23)], "seed"),
    ("ppo", ["--eval-episodes", "-1"], "eval_episodes"),
    ("ppo", ["--num-chunks", "0"], "num_chunks"),
    ("ppo", ["--keep-checkpoints", "0"], "keep_checkpoints"),
    ("ppo", ["--hang-factor", "1"], "hang_factor"),
    # offline datasets
    ("bc", ["--dataset", "DATA/missing.hdf5"], "dataset"),
    ("bc", ["--dataset", "DATA/fifo"], "dataset"),
    ("bc", ["--dataset", "DATA/notes.txt"], "dataset"),
    ("bc", ["--dataset", "DATA/five.hdf5"], "batch_size"),
    ("iql", ["--dataset", "DATA/wild_actions.hdf5"], "dataset"),
    ("bc", ["--dataset", "DATA/five.hdf5", "--env-id", "CartPole-v1"], "env_id"),
]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    """A 5-transition Pendulum dataset, one whose actions are 1000x outside Pendulum's [-2, 2], a fine one, a FIFO
    and a text file."""
    folder = tmp_path_factory.mktemp("bad_data")
    rng = np.random.default_rng(0)
    for name, size, scale in (("five", 5, 1.0), ("wild_actions", 1000, 1000.0), ("fine", 1000, 1.0)):
        obs = rng.uniform(-1, 1, (size, 3)).astype(np.float32)
        datasets.save(folder / f"{name}.hdf5", {
            "observations": obs, "next_observations": np.roll(obs, -1, 0),
            "actions": (scale * rng.uniform(-2, 2, (size, 1))).astype(np.float32),
            "rewards": rng.uniform(-16, 0, size).astype(np.float32), "terminals": np.zeros(size, bool),
            "timeouts": np.arange(size) % 50 == 49}, {"env_id": "Pendulum-v1"})
    os.mkfifo(folder / "fifo")
    (folder / "notes.txt").write_text("not a dataset")
    return folder


@pytest.mark.parametrize("algo, flags, field", CASES, ids=[f"{a}:{' '.join(f)[:40]}" for a, f, _ in CASES])
def test_bad_input_is_refused_naming_the_field_and_leaves_no_run_folder(algo, flags, field, bad_data, tmp_path,
                                                                         capsys):
    module = importlib.import_module(f"rlzoo.algorithms.{algo}")
    run_dir = tmp_path / "run"
    flags = [flag.replace("DATA", str(bad_data)) for flag in flags]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(algo, module.Config, module.HParams, module.make_train,
                args=[*flags, "--no-progress", "--run-dir", str(run_dir)])
    message = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2, message
    assert "Traceback" not in message
    # `field=value`, or `env_id 'X' is unknown`, or tyro's `'--sequence-model'` for a choice it refuses
    assert any(name in message for name in (f"{field}=", f"{field} '", f"'{field}'",
                                            f"'--{field.replace('_', '-')}'")), message
    assert not run_dir.exists()


def test_the_table_covers_every_algorithm_file():
    algorithms = {path.stem for path in (Path(__file__).resolve().parent.parent / "algorithms").glob("*.py")}
    assert algorithms - {"__init__"} == {algo for algo, _, _ in CASES}


def test_the_memory_check_names_the_field_that_sizes_the_largest_part_of_the_state():
    """From shapes alone: DQN's state is mostly its replay buffer, PPO's (4 envs, small networks) its parameters
    and optimiser state, which grow with the members."""
    import jax

    from rlzoo.algorithms import dqn, ppo
    from rlzoo.footprint import check_run_fits
    from rlzoo.sweep import expand_members, make_grid, seed_keys
    from rlzoo.trainer import ConfigError

    for module, config, expected in (
            (dqn, dqn.Config(buffer_size=100_000, learning_starts=1_000), r"buffer_size=100000 is not allowed here"),
            (ppo, ppo.Config(num_envs=4), r"4 member\(s\) \(num_seeds x the --sweep grid\) do not fit here")):
        trainer = module.make_train(config)
        keys, member_hparams = expand_members(seed_keys(0, 4), make_grid(module.HParams(), {}).hparams)
        needed = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
            jax.eval_shape(trainer.init_members, keys, member_hparams, trainer.data)))
        check_run_fits(trainer, keys, member_hparams, 0, values=vars(config), available=needed)  # fits exactly
        with pytest.raises(ConfigError, match=expected):
            check_run_fits(trainer, keys, member_hparams, 0, values=vars(config), available=needed - 1)
