"""Facts about TD(lambda) prediction: it finds the true values of the random walk, reproduces Sutton & Barto's
Fig. 12.3, its linear variants equal the lambda-return algorithms they are defined to equal, a neural V predicts
held-out Monte Carlo returns on CartPole, and its inputs are checked."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.algorithms import ppo, td
from rlzoo.trainer import ConfigError, check_hparams
from rlzoo.experiments import random_walk_td
from rlzoo.experiments import random_walk_td as rw
from rlzoo.runner import run_cli
from rlzoo.returns import discounted_returns


@pytest.fixture(scope="module")
def random_walk(tmp_path_factory):
    """The full Fig. 12.3 experiment (8 lambdas x 15 alphas x 100 runs x 10 episodes), run once."""
    run_dir = tmp_path_factory.mktemp("td") / "random_walk"
    return run_dir, rw.run_random_walk(rw.RandomWalkExperiment(run_dir=str(run_dir)))


def test_intermediate_lambda_beats_td0_and_monte_carlo_at_their_best_alpha(random_walk):
    _, summary = random_walk
    best = {float(lam): entry["rms"] for lam, entry in summary["best_by_lambda"].items()}
    intermediate = min(best[lam] for lam in best if 0.0 < lam < 1.0)
    assert intermediate < best[0.0] - 0.05 and intermediate < best[1.0] - 0.1, best


def test_the_best_rms_error_lies_in_the_books_range(random_walk):
    run_dir, summary = random_walk
    assert 0.2 <= summary["best_rms"] <= 0.35, summary["best_rms"]
    assert summary["best_rms"] == min(entry["rms"] for entry in summary["best_by_lambda"].values())
    assert json.loads((run_dir / "summary.json").read_text())["best_rms"] == summary["best_rms"]
    table = np.loadtxt(run_dir / "rms_vs_alpha.csv", delimiter=",", skiprows=1)
    assert table.shape == (8, 1 + 15) and np.isclose(table[:, 1:].min(), summary["best_rms"], atol=1e-4)
    assert (run_dir / "rms_vs_alpha.png").stat().st_size > 0 and (run_dir / "rms_vs_alpha.md").exists()


def test_random_walk_command_line_writes_the_run_folder_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    """`python -m rlzoo.experiments.random_walk_td ...` is the experiment's command line."""
    run_dir = tmp_path / "cli"
    monkeypatch.setattr("sys.argv", ["random_walk_td.py", "--method", "true-online",
                                     "--lambdas", "0", "0.8", "--alphas", "0.2", "0.4", "--num-runs", "8",
                                     "--run-dir", str(run_dir)])
    random_walk_td.main()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "true-online" and set(summary["best_by_lambda"]) == {"0", "0.8"}
    assert json.loads((run_dir / "config.json").read_text())["algo"] == "td"
    table = np.loadtxt(run_dir / "rms_vs_alpha.csv", delimiter=",", skiprows=1)
    assert table.shape == (2, 3) and np.isclose(table[:, 1:].min(), summary["best_rms"], atol=1e-4)
    assert "best RMS" in capsys.readouterr().out and (run_dir / "rms_vs_alpha.png").stat().st_size > 0
    monkeypatch.setattr("sys.argv", ["random_walk_td.py", "--lambdas", "1.2"])
    with pytest.raises(SystemExit) as exit_info:
        random_walk_td.main()
    assert exit_info.value.code == 2 and "lambdas=1.2 is not allowed" in capsys.readouterr().err


@pytest.mark.parametrize("trace", ["accumulating", "dutch"])
def test_tabular_td_lambda_with_a_decaying_step_converges_to_the_true_values(trace):
    config = td.Config(env_id="RandomWalk19-v0", value_fn="tabular", view="backward", trace=trace, policy="random",
                       total_timesteps=100_000, num_envs=16, num_steps=25, anneal_lr=True)
    trainer = td.make_train(config)
    _, metrics = jax.jit(jax.vmap(trainer, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(0), 2),
                                                               td.HParams(lr=0.05, gamma=1.0, lam=0.5))
    rms = np.asarray(metrics["value_error"][:, -1])
    assert (rms < 0.05).all(), rms
    assert (np.asarray(metrics["value_error"][:, 0]) > 0.3).all()  # it started far from them


def linear_episode(key, num_features=5, length=12):
    """Random features of one episode that terminates at its last step; rewards in [-1, 1]."""
    feature_key, reward_key = jax.random.split(key)
    features = jax.random.normal(feature_key, (length + 1, num_features))
    next_features = features[1:].at[-1].set(0.0)  # the terminal state has no features
    terminated = jnp.arange(length) == length - 1
    return features[:-1], next_features, jax.random.uniform(reward_key, (length,), minval=-1, maxval=1), terminated


def online_lambda_return_weights(w0, xs, next_xs, rewards, terminated, alpha, gamma, lam):
    """The online lambda-return algorithm (Sutton & Barto eq. 12.9-12.10), by its definition, in float64.

    At each horizon h it restarts from w0 and makes h updates towards the truncated lambda-returns
    G^lam_{t:h}, which bootstrap V(S_k) with the final weights of horizon k - 1. Returns w^h_h for h = 1..T.
    """
    xs, next_xs, rewards, w0 = (np.asarray(a, np.float64) for a in (xs, next_xs, rewards, w0))
    finals = [w0]
    for h in range(1, len(rewards) + 1):
        bootstrap = [0.0 if terminated[k - 1] else next_xs[k - 1] @ finals[k - 1] for k in range(1, h + 1)]
        w = w0.copy()
        for t in range(h):
            g = rewards[h - 1] + gamma * bootstrap[h - 1]  # G^lam_{h-1:h}, then backwards to G^lam_{t:h}
            for k in range(h - 2, t - 1, -1):
                g = rewards[k] + gamma * ((1 - lam) * bootstrap[k] + lam * g)
            w = w + alpha * (g - w @ xs[t]) * xs[t]
        finals.append(w)
    return np.stack(finals[1:])


def test_true_online_td_lambda_equals_the_online_lambda_return_algorithm_at_every_step():
    xs, next_xs, rewards, terminated = linear_episode(jax.random.PRNGKey(0))
    w0, alpha, gamma, lam = jax.random.normal(jax.random.PRNGKey(1), (5,)) * 0.1, 0.05, 0.9, 0.7

    def step(carry, transition):
        w, trace, v_old = carry
        w, trace, v_old, _ = td.true_online_td_step(w, trace, v_old, *transition, alpha, gamma, lam)
        return (w, trace, v_old), w

    _, weights = jax.lax.scan(step, (w0, jnp.zeros(5), jnp.zeros(())), (xs, rewards, next_xs, terminated))
    expected = online_lambda_return_weights(w0, xs, next_xs, rewards, terminated, alpha, gamma, lam)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    # The fact is not trivial: accumulating TD(lambda) ends elsewhere.
    (accumulating, _), _ = jax.lax.scan(
        lambda carry, t: (td.accumulating_td_step(*carry, *t, alpha, gamma, lam)[:2], None),
        (w0, jnp.zeros(5)), (xs, rewards, next_xs, terminated))
    assert np.abs(np.asarray(accumulating) - expected[-1]).max() > 1e-3


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_offline_td_lambda_makes_the_same_total_update_as_the_offline_lambda_return(lam):
    xs, next_xs, rewards, terminated = linear_episode(jax.random.PRNGKey(2))
    w0, mask = jax.random.normal(jax.random.PRNGKey(3), (5,)), jnp.ones(12, bool)
    forward = rw.offline_lambda_return_episode(w0, xs, next_xs, rewards, terminated, mask, 0.1, 0.95, lam,
                                               sequential=False)
    backward = rw.offline_td_lambda_episode(w0, xs, next_xs, rewards, terminated, mask, 0.1, 0.95, lam)
    np.testing.assert_allclose(forward, backward, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(forward - w0)).max() > 1e-2


@pytest.fixture(scope="module")
def cartpole_td0():
    """Neural TD(0) with the default settings (100k steps, pole-angle policy, gamma 0.99) on two seeds."""
    config, hparams = td.Config(), td.HParams()
    assert hparams.lam == 0.0 and config.policy == "pole-angle" and hparams.gamma == 0.99
    state, metrics = jax.jit(jax.vmap(td.make_train(config), in_axes=(0, None)))(
        jax.random.split(jax.random.PRNGKey(0), 2), hparams)
    return config, state, metrics


def test_neural_td0_predicts_monte_carlo_returns_of_held_out_cartpole_episodes(cartpole_td0):
    """Relative error sum|V - G| / sum|G| over 64 x 500 held-out steps (complete episodes only) below 0.25.

    The pole-angle policy is deterministic, so G is a function of the state. For scale: the best constant
    predictor has a relative error of about 0.47, and regressing the same MLP directly on Monte Carlo
    returns reaches about 0.21.
    """
    config, state, metrics = cartpole_td0
    batch = jax.jit(lambda key: td.fresh_episodes(config, key))(jax.random.PRNGKey(7))
    value = td.make_value_function(config, td.make_env(config.env_id).spec)
    errors = jax.jit(jax.vmap(lambda params: td.relative_value_error(value.apply(params, batch.obs)[..., 0],
                                                                     batch, 0.99)))(state.params)
    returns = discounted_returns(batch.reward, batch.terminated, batch.truncated, 0.99)
    finished = td.finished_in_rollout(batch.terminated, batch.truncated)
    constant = td.relative_value_error(jnp.full_like(returns, returns[finished].mean()), batch, 0.99)
    assert (np.asarray(errors) < 0.25).all() and (np.asarray(errors) < 0.6 * constant).all(), (errors, constant)
    assert np.isfinite(np.asarray(metrics["value_loss"])).all()


def test_the_evaluated_policy_is_the_greedy_policy_of_a_ppo_checkpoint_and_td_keeps_the_run_folder(
        sweep_run, tmp_path):
    from rlzoo.runner import load_run
    from rlzoo.networks import ActorCritic

    ppo_dir, _ = sweep_run  # the shared tiny PPO run (CartPole-v1)
    run = load_run(ppo_dir, ppo.make_train, ppo.Config, ppo.HParams)
    obs = jax.random.normal(jax.random.PRNGKey(0), (256, 4)) * jnp.array([1.0, 1.0, 0.2, 1.0])
    policy = td.make_policy(td.Config(policy="checkpoint", policy_run=str(ppo_dir)), td.make_env("CartPole-v1").spec)
    network = ActorCritic((4,), 2, True, run.config.hidden_sizes, run.config.activation)
    params = jax.tree.map(lambda x: x[0], run.state.params)  # the first configuration's first seed
    greedy = network.apply(params, obs, method=ActorCritic.policy).mode()
    np.testing.assert_array_equal(policy(jax.random.PRNGKey(1), obs), greedy)
    assert 0 < greedy.mean() < 1  # both actions occur, so the comparison means something

    summary = run_cli("td", td.Config, td.HParams, td.make_train, args=[
        "--policy", "checkpoint", "--policy-run", str(ppo_dir), "--total-timesteps", "2048",
        "--num-aux-tasks", "4", "--num-chunks", "2", "--no-progress", "--run-dir", str(tmp_path / "td")])
    header = (tmp_path / "td" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("episode_return", "episode_value_error", "value_loss", "aux_loss"):
        assert name in header, header
    assert summary["env_steps"] == 2048 and (tmp_path / "td" / "eval.csv").exists()


@pytest.mark.parametrize("make, message", [
    (lambda: check_hparams(td.HParams(lam=1.5)), r"lam=1.5 is not allowed: must lie in \[0, 1\]"),
    (lambda: check_hparams(td.HParams(lam=-0.1)), r"lam=-0.1 is not allowed"),
    (lambda: rw.RandomWalkExperiment(lambdas=(0.5, 1.2)), r"lambdas=1.2 is not allowed: each lambda must lie in"),
    (lambda: td.Config(num_aux_tasks=-1), "num_aux_tasks=-1 is not allowed: must be >= 0"),
    (lambda: td.Config(value_fn="linear", num_aux_tasks=2), "auxiliary heads need value_fn='neural'"),
    (lambda: td.Config(view="backward"), "the backward view .* needs a tabular or linear value_fn"),
    (lambda: td.Config(policy="checkpoint"), "policy_run='' is not allowed"),
    (lambda: td.make_train(td.Config(env_id="Acrobot-v1")), "pole-angle needs env_id CartPole-v1"),
    (lambda: td.make_train(td.Config(value_fn="tabular")), "tabular V needs one-hot observations"),
    (lambda: td.make_train(td.Config(policy="checkpoint", policy_run="/nonexistent")), "must be a run folder"),
])
def test_bad_input_is_a_clear_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_the_command_line_refuses_a_lambda_outside_the_unit_interval(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("td", td.Config, td.HParams, td.make_train, args=["--lam", "1.5", "--no-progress"])
    assert exit_info.value.code == 2 and "lam=1.5 is not allowed" in capsys.readouterr().err
