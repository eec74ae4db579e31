"""Facts about evaluation episodes and the best checkpoint."""

import csv
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.envs import make_env
from rlzoo.trainer import Trainer
from rlzoo.evaluate import evaluate, greedy_member_returns


def test_each_episode_counts_only_its_first_episode():
    push_left = lambda key, obs: jnp.zeros(obs.shape[0], jnp.int32)  # noqa: E731
    result = jax.jit(lambda key: evaluate(push_left, make_env("CartPole-v1"), key, 6, 500))(jax.random.PRNGKey(0))
    lengths = np.asarray(result.episode_length)
    # Always pushing left drops the pole within a few dozen steps; CartPole pays 1 per step.
    assert (lengths > 0).all() and (lengths < 40).all()
    np.testing.assert_array_equal(np.asarray(result.episode_return), lengths)


def test_greedy_member_returns_scores_each_member_by_its_own_greedy_policy():
    """Member m always pushes in direction state[m] (0: left, 1: right), greedy or not."""
    env = make_env("CartPole-v1")
    act = lambda state, key, obs, greedy: jnp.full(obs.shape[0], state, jnp.int32) if greedy else None  # noqa: E731
    trainer = Trainer(None, None, 1, 1, act, env)
    returns = greedy_member_returns(trainer, jnp.array([0, 1, 0]), jax.random.PRNGKey(0), num_episodes=4)
    direct = [float(evaluate(lambda k, obs, a=a: jnp.full(obs.shape[0], a, jnp.int32), env, key, 4, 500)
                    .episode_return.mean()) for a, key in zip([0, 1, 0], jax.random.split(jax.random.PRNGKey(0), 3))]
    assert returns.shape == (3,) and (returns < 40).all()
    np.testing.assert_allclose(returns, direct, rtol=1e-6)


def test_time_limited_episodes_run_to_their_limit():
    zero_torque = lambda key, obs: jnp.zeros((obs.shape[0], 1))  # noqa: E731
    result = evaluate(zero_torque, make_env("Pendulum-v1"), jax.random.PRNGKey(1), 4, 300)
    np.testing.assert_array_equal(np.asarray(result.episode_length), 200)
    assert (np.asarray(result.episode_return) < 0).all()


def test_eval_csv_has_a_row_per_chunk_and_member_and_best_checkpoint_has_the_highest_mean(sweep_run):
    run_dir, summary = sweep_run
    with (run_dir / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2 * 2  # 4 chunks x 2 configurations x 2 seeds
    mean_by_update = defaultdict(list)
    for row in rows:
        mean_by_update[int(row["update"])].append(float(row["eval_return"]))
    best_update = max(mean_by_update, key=lambda u: np.mean(mean_by_update[u]))
    best_steps = [int(p.name) for p in (run_dir / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    assert best_steps == [best_update]
    assert set(summary["final_eval_return"]) == {"lr=0.001", "lr=0.0003"}
