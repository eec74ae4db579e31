"""Facts about the offline baselines TD3+BC and CQL on the Pendulum-v1 medium dataset, and about the update
step of every offline algorithm file here (TD3+BC, CQL, CSVE): one jitted function that never calls the host.

Each baseline gets one CLI run (2 seeds, 2,000 gradient steps, 2x64 MLPs), shared by its tests. Random
actions score 0 by construction of the normalised score (the dataset's `ref_min_score` is the random tier's
mean return); the behaviour policy of the medium tier scores about 50.
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.algorithms import cql, csve, td3_bc
from rlzoo.trainer import ConfigError, check_hparams
from rlzoo.runner import run_cli

STEPS = 2_000
SMALL = ["--hidden-sizes", "64", "64", "--total-updates", str(STEPS), "--steps-per-update", str(STEPS // 2),
         "--episodes-per-eval", "50", "--num-seeds", "2", "--num-chunks", "1", "--eval-episodes", "2",
         "--no-progress"]
MIN_SCORE = 25.0  # each seed's final normalised score must beat random (0) by this much


@pytest.fixture(scope="module")
def medium(pendulum_offline) -> str:
    return pendulum_offline.written["medium"]["path"]


def cli_run(module, name: str, args: list[str], tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(name) / "run"
    summary = run_cli(name, module.Config, module.HParams, module.make_train,
                      args=[*args, *SMALL, "--run-dir", str(run_dir)])
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return run_dir, summary, rows


@pytest.fixture(scope="module")
def td3_bc_run(medium, tmp_path_factory):
    return cli_run(td3_bc, "td3_bc", ["--dataset", medium], tmp_path_factory)


@pytest.fixture(scope="module")
def cql_run(medium, tmp_path_factory):
    """CQL with 4 sampled actions of each kind (12 in the log-sum-exp) and batch 128, to fit the CPU budget."""
    return cli_run(cql, "cql", ["--dataset", medium, "--num-sampled-actions", "4", "--batch-size", "128"],
                   tmp_path_factory)


def final_scores(rows: list[dict]) -> np.ndarray:
    last = max(int(r["update"]) for r in rows)
    return np.array([float(r["normalized_score"]) for r in sorted(rows, key=lambda r: int(r["seed"]))
                     if int(r["update"]) == last])


@pytest.mark.parametrize("run, losses", [("td3_bc_run", ("critic_loss", "actor_loss", "bc_loss", "lambda")),
                                         ("cql_run", ("critic_loss", "cql_loss", "actor_loss", "alpha"))])
def test_baseline_runs_end_to_end_with_finite_losses_and_beats_random(run, losses, request):
    run_dir, summary, rows = request.getfixturevalue(run)
    for column in losses:
        values = np.array([float(r[column]) for r in rows])
        assert np.isfinite(values).all(), (column, values)
    scores = final_scores(rows)
    print(f"{run}: final normalised scores {scores}")
    assert scores.shape == (2,) and (scores >= MIN_SCORE).all(), scores


@pytest.mark.parametrize("run, algo", [("td3_bc_run", "td3_bc"), ("cql_run", "cql")])
def test_baseline_run_keeps_the_run_folder_contract(run, algo, request):
    run_dir, summary, rows = request.getfixturevalue(run)
    for name in ("config.json", "metrics.csv", "summary.json", "eval.csv", "learning_curve.png", "checkpoints/2"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "config.json").read_text())["algo"] == algo
    assert [int(r["env_steps"]) for r in rows] == [1_000, 1_000, 2_000, 2_000]  # gradient steps, 2 seeds
    assert summary["env_steps"] == STEPS and len(summary["final_return_per_seed"]["default"]) == 2


def test_cql_keeps_the_gap_between_sampled_and_dataset_actions_positive(cql_run):
    """The CQL(H) regulariser's gap E[logsumexp_a Q(s, a) - Q(s, a_data)] is what it minimises; it stays > 0."""
    gaps = np.array([float(r["cql_gap"]) for r in cql_run[2]])
    assert (gaps > 0).all(), gaps


def test_cql_logsumexp_scores_every_sampled_action_at_its_own_state():
    """One critic call on [B * 3N] rows gives, per state i, logsumexp_k [Q(s_i, a_ik) - log mu(a_ik)] over its
    N uniform actions (density 1 / range^A), N actions of pi at s_i and N at s'_i (density pi), as CQL app. F."""
    from rlzoo.datasets import Dataset
    from rlzoo.networks import EnsembleQ, TanhGaussianActor

    batch_size, num, obs_dim, action_dim, bounds = 3, 2, 4, 2, (-2.0, 2.0)
    nets = cql.Networks(TanhGaussianActor(action_dim, (8,)), EnsembleQ(2, (8,)))
    obs_key, next_key, actor_key, critic_key, key = jax.random.split(jax.random.PRNGKey(0), 5)
    obs = jax.random.normal(obs_key, (batch_size, obs_dim))
    batch = Dataset(obs, jnp.zeros((batch_size, action_dim)), jnp.zeros(batch_size),
                    jax.random.normal(next_key, (batch_size, obs_dim)), jnp.zeros(batch_size), jnp.zeros(batch_size))
    actor_params = nets.actor.init(actor_key, obs)
    critic_params = nets.critic.init(critic_key, obs, batch.actions)
    estimate = cql.logsumexp_q(nets, critic_params, actor_params, batch, key, bounds, num)

    # The same samples (same keys), each scored alone at its own state.
    uniform_key, current_key, following_key = jax.random.split(key, 3)
    uniform = jax.random.uniform(uniform_key, (batch_size, num, action_dim), minval=bounds[0], maxval=bounds[1])
    current = cql.sample_actions(nets, actor_params, batch.observations, current_key, bounds, num)
    following = cql.sample_actions(nets, actor_params, batch.next_observations, following_key, bounds, num)
    uniform_log_mu = -action_dim * np.log(bounds[1] - bounds[0])
    reference = np.zeros((2, batch_size))
    for i in range(batch_size):
        samples = [(uniform[i, k], uniform_log_mu) for k in range(num)]
        samples += [(actions[i, k], log_mu[i, k]) for actions, log_mu in (current, following) for k in range(num)]
        terms = np.stack([np.asarray(nets.critic.apply(critic_params, obs[i:i + 1], action[None])[:, 0]) - log_mu
                          for action, log_mu in samples])  # [3N, num_critics]
        reference[:, i] = np.log(np.exp(terms).sum(axis=0))
    assert estimate.shape == (2, batch_size)
    np.testing.assert_allclose(estimate, reference, rtol=1e-5, atol=1e-5)


def test_td3_bc_moves_the_actor_and_targets_only_every_policy_delay_steps(medium):
    config = td3_bc.Config(dataset=medium, total_updates=2, steps_per_update=1, episodes_per_eval=0,
                           hidden_sizes=(8,), policy_delay=2)
    trainer = td3_bc.make_train(config)
    update = jax.jit(trainer.update)
    states = [trainer.init(jax.random.PRNGKey(0), td3_bc.HParams(), trainer.data)]
    for _ in range(2):
        states.append(update(states[-1], td3_bc.HParams(), trainer.data)[0])
    leaves = lambda state, field: jax.tree.leaves(getattr(state.learner, field))  # noqa: E731
    moved = lambda a, b, field: not all(np.array_equal(x, y) for x, y in zip(leaves(a, field), leaves(b, field)))  # noqa: E731
    for field in ("actor_params", "target_actor_params", "target_critic_params"):
        assert not moved(states[0], states[1], field), field
        assert moved(states[1], states[2], field), field
    assert moved(states[0], states[1], "critic_params") and moved(states[1], states[2], "critic_params")


@pytest.mark.parametrize("module, options", [
    (td3_bc, dict(hidden_sizes=(8,))),
    (cql, dict(hidden_sizes=(8,), num_sampled_actions=2)),
    (cql, dict(hidden_sizes=(8,), num_sampled_actions=2, lagrange=True, backup_entropy=True)),
    (csve, dict(hidden_sizes=(8,), model_members=2, model_hidden_sizes=(8,), model_max_epochs=1,
                model_steps_per_epoch=1)),
])
def test_an_update_of_many_gradient_steps_is_one_program_without_host_calls(module, options, medium):
    """The update is traced whole (lax.scan over gradient steps, evaluation included) and calls back to no host
    function, so a run of a million updates is num_chunks device programs; the dataset is an input of that
    program (the Trainer's `data`), not a constant embedded in it."""
    config = module.Config(dataset=medium, total_updates=1_000, steps_per_update=1_000, episodes_per_eval=2, **options)
    trainer = module.make_train(config)
    state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0), module.HParams(), trainer.data)
    jaxpr = jax.make_jaxpr(trainer.update)(state, module.HParams(), trainer.data)
    dataset_bytes = sum(x.nbytes for x in jax.tree.leaves(trainer.data))
    assert sum(np.asarray(c).nbytes for c in jaxpr.consts) < dataset_bytes / 100, "the dataset is embedded"
    hlo = jax.jit(lambda s, hp, d: trainer.run(s, hp, 1, d)).lower(state, module.HParams(), trainer.data).as_text()
    assert len(hlo) < dataset_bytes, "the dataset is embedded in the compiled program"
    primitives = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
    text = str(jaxpr)
    assert "scan" in primitives
    assert not any(word in text for word in ("callback", "debug_print", "io_callback")), "host call in the update"
    assert not any(x.shape[:1] == (20_000,) for x in jax.tree.leaves(state)), "the dataset is not in the state"


@pytest.mark.parametrize("module, options, message", [
    (td3_bc, dict(policy_delay=0), "policy_delay=0 is not allowed"),
    (td3_bc, dict(batch_size=0), "batch_size=0 is not allowed"),
    (cql, dict(num_sampled_actions=0), "num_sampled_actions=0 is not allowed"),
    (cql, dict(activation="sigmoid"), "activation='sigmoid' is not allowed"),
])
def test_bad_config_is_a_clear_error(module, options, message):
    with pytest.raises(ConfigError, match=message):
        module.Config(dataset="unused.hdf5", env_id="none", **options)


@pytest.mark.parametrize("module, field, value", [
    (td3_bc, "alpha", -2.5), (td3_bc, "policy_noise", -0.2), (td3_bc, "noise_clip", -0.5), (td3_bc, "tau", 0.0),
    (cql, "min_q_weight", -5.0), (cql, "target_action_gap", -1.0), (cql, "actor_lr", 0.0), (cql, "init_alpha", 0.0),
])
def test_bad_coefficients_are_a_clear_error(module, field, value):
    with pytest.raises(ConfigError, match=f"{field}={value} is not allowed"):
        check_hparams(module.HParams(**{field: value}))
