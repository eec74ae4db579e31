"""Facts about ZP: with an EMA target it learns CartPole through 16 distractor dimensions without its latent
collapsing; the three targets differ exactly in where gradients flow; the distractors are pure noise; bad input
is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import replay
from rlzoo.algorithms import zp
from rlzoo.trainer import ConfigError, check_hparams
from rlzoo.envs import make_env
from rlzoo.envs.distractor import wrap_env
from rlzoo.runner import run_cli
from rlzoo.sweep import seed_keys
from tests.test_dqn import greedy_return

SRANK_THRESHOLD = 16  # half of the 32 latent dimensions; a collapsed latent has srank 1 or 2


@pytest.fixture(scope="module")
def ema_run():
    """ZP with the EMA target and the default settings (80k steps, 16 distractors) on two seeds.

    Returns the best of 5 greedy evaluations over the last 20% of training per seed (as in test_dqn), and the
    final state.
    """
    config, hparams = zp.Config(), zp.HParams()
    assert config.zp_target == "ema" and config.num_distractors == 16 and hparams.tau_ema == 0.005
    trainer = zp.make_train(config)
    per_chunk = trainer.num_updates // 25
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(seed_keys(0, 2), hparams)
    state = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, trainer.num_updates - 5 * per_chunk)[0]))(state)
    run_chunk = jax.jit(jax.vmap(lambda s: trainer.run(s, hparams, per_chunk)))
    best = np.full(2, -np.inf)
    for i in range(5):
        state, metrics = run_chunk(state)
        best = np.maximum(best, greedy_return(trainer, state, jax.random.split(jax.random.PRNGKey(i), 2)))
    return config, state, metrics, best


@pytest.mark.slow
def test_zp_with_an_ema_target_learns_cartpole_with_16_distractors_on_each_of_two_seeds(ema_run):
    """Best greedy return near the end: >= 100 on each seed and >= 300 on average (the cap is 500).

    References: the untrained greedy network 9.5-18.1 (4 seeds), random actions about 22. Measured: both seeds
    >= 400 on an Intel Xeon; 500 and 150 on an AMD EPYC (another CPU rounds differently, in effect other seeds:
    at the default 80k steps one seed in two is not yet at the cap).
    """
    _, _, metrics, best = ema_run
    print(f"ZP (EMA) best greedy return per seed {best}")
    assert (best >= 100).all() and best.mean() >= 300, best
    assert np.isfinite(np.asarray(metrics["zp_loss"])).all()


@pytest.mark.slow
def test_the_ema_latent_does_not_collapse(ema_run):
    """srank (99% of the singular-value mass) of the latents of 512 replayed observations, per seed."""
    config, state, metrics, _ = ema_run
    _, network = zp.make_env_and_network(config)
    obs = state.buffer.data.obs[:, :128].reshape(2, 512, -1)  # 128 rows x 4 envs per seed
    latents = jax.vmap(lambda p, o: network.apply(p, o, method=zp.ZPNetwork.encode))(state.params, obs)
    sranks = np.asarray(jax.vmap(zp.effective_rank)(latents))
    assert (sranks >= SRANK_THRESHOLD).all(), sranks
    assert (np.asarray(metrics["latent_srank"][:, -1]) >= SRANK_THRESHOLD).all()


def test_effective_rank_counts_the_directions_that_hold_99_percent_of_the_singular_values():
    basis = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (64, 8)))[0]
    assert zp.effective_rank(basis * jnp.array([1.0] * 3 + [1e-4] * 5)) == 3
    assert zp.effective_rank(basis) == 8
    assert zp.effective_rank(jnp.outer(jnp.arange(64.0), jnp.ones(8))) == 1


def test_only_the_online_target_passes_gradients_through_the_target_encoder():
    config = zp.Config(zp_steps=2)
    _, network = zp.make_env_and_network(config)
    obs = jax.random.normal(jax.random.PRNGKey(0), (8, 2, 20))
    steps = zp.Transition(obs, jnp.zeros((8, 2), jnp.int32), jnp.zeros((8, 2)), jnp.zeros((8, 2), bool),
                          jnp.zeros((8, 2), bool), obs + 1.0)
    sequence = replay.SequenceSample(None, steps, jnp.ones((8, 2), bool))
    params = network.init(jax.random.PRNGKey(1), obs[:, 0], jnp.zeros(8, jnp.int32))
    other = network.init(jax.random.PRNGKey(2), obs[:, 0], jnp.zeros(8, jnp.int32))

    def grads(target):
        loss = lambda p: zp.zp_loss(zp.Config(zp_steps=2, zp_target=target), network, p, other, sequence)[0]  # noqa: E731
        return jax.grad(loss)(params)["params"]["encoder"]

    def frozen_target_grads():  # the detached loss, with the targets computed outside the gradient
        targets = network.apply(params, steps.next_obs, method=zp.ZPNetwork.encode)

        def loss(p):
            latent = network.apply(p, obs[:, 0], method=zp.ZPNetwork.encode)
            total = 0.0
            for k in range(2):
                latent = network.apply(p, latent, steps.action[:, k], method=zp.ZPNetwork.transition)
                total = total + jnp.sum(jnp.square(latent - targets[:, k]), -1)
            return jnp.mean(total) / 2

        return jax.grad(loss)(params)["params"]["encoder"]

    detached, online, ema, frozen = jax.jit(
        lambda: (grads("detached"), grads("online"), grads("ema"), frozen_target_grads()))()
    close = lambda a, b: all(np.allclose(x, y, rtol=1e-5, atol=1e-7)  # noqa: E731
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert close(detached, frozen)
    assert not close(online, detached)  # online: the target encoder's own gradient is added
    assert not close(ema, detached)  # ema: the targets come from the other (EMA) parameters


def test_distractors_are_standard_normal_and_leave_the_task_unchanged():
    env = wrap_env(make_env("CartPole-v1"), 16)
    assert env.spec.obs_shape == (20,) and env.spec.env_id == "CartPole-v1+distractors16"
    states, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 4096))
    assert np.abs(np.asarray(obs[:, :4])).max() <= 0.05  # CartPole's own reset range
    noise = np.asarray(obs[:, 4:])
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02
    _, next_obs, reward, *_ = jax.jit(jax.vmap(env.step))(jax.random.split(jax.random.PRNGKey(1), 4096), states,
                                                 jnp.ones(4096, jnp.int32))
    assert (np.asarray(reward) == 1.0).all() and (np.asarray(next_obs[:, 1]) > np.asarray(obs[:, 1])).all()
    assert np.abs(np.corrcoef(np.asarray(next_obs[:, 4]), np.asarray(obs[:, 4]))[0, 1]) < 0.1  # fresh noise


def test_zp_with_three_latent_steps_keeps_the_run_folder_contract(tmp_path):
    summary = run_cli("zp", zp.Config, zp.HParams, zp.make_train, args=[
        "--zp-steps", "3", "--zp-target", "detached", "--total-timesteps", "4000", "--learning-starts", "1000",
        "--num-chunks", "2", "--no-progress", "--run-dir", str(tmp_path / "zp")])
    header = (tmp_path / "zp" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("episode_return", "loss", "zp_loss", "latent_srank"):
        assert name in header, header
    assert summary["env_steps"] == 4000 and np.isfinite(summary["final_eval_return"])


def test_a_learning_update_moves_the_ema_encoder_and_q_head_by_tau_towards_the_online_network():
    """From a learning state whose EMA copy was moved away from the online network, one `update` must give
    target <- (1 - tau_ema) target + tau_ema theta' (theta' the updated online parameters, tau_ema = 0.005), and
    an update before learning_starts must leave it unchanged.
    Catches: EMA updates turned off, tau and 1 - tau swapped, the EMA taken towards the old parameters, the
    EMA moving before learning starts."""
    config = zp.Config(total_timesteps=128, learning_starts=64, batch_size=8, buffer_size=128)
    hp = zp.HParams()
    trainer = zp.make_train(config)
    update = jax.jit(trainer.update)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0), hp)
    leaves, treedef = jax.tree.flatten(state.params)
    noise = treedef.unflatten([0.1 * jax.random.normal(k, x.shape)
                               for x, k in zip(leaves, jax.random.split(jax.random.PRNGKey(1), len(leaves)))])
    close = lambda a, b: all(np.allclose(x, y, rtol=1e-5, atol=1e-7)  # noqa: E731
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    moved = state._replace(target_params=jax.tree.map(jnp.add, state.params, noise))
    assert close(update(moved, hp)[0].target_params, moved.target_params)  # update 0: not learning yet
    for _ in range(config.learning_starts_updates):
        state, _ = update(state, hp)
    state = state._replace(target_params=jax.tree.map(jnp.add, state.params, noise))
    new, _ = update(state, hp)
    online, before = jax.tree.leaves(new.params), jax.tree.leaves(state.target_params)
    expected = [(1.0 - hp.tau_ema) * np.asarray(t, np.float64) + hp.tau_ema * np.asarray(o, np.float64)
                for t, o in zip(before, online)]
    assert close(new.target_params, expected)
    assert not close(new.params, state.params)  # the online network learned in this update
    assert not close(new.target_params, state.target_params)  # "no EMA update" is told apart


@pytest.mark.parametrize("make, message", [
    (lambda: zp.Config(zp_steps=0), "zp_steps=0 is not allowed: K must be >= 1"),
    (lambda: zp.Config(zp_target="moving"), "zp_target='moving' is not allowed: one of online, detached, ema"),
    (lambda: zp.Config(num_distractors=-1), "num_distractors=-1 is not allowed: must be >= 0"),
    (lambda: check_hparams(zp.HParams(tau_ema=0.0)), r"tau_ema=0.0 is not allowed: must lie in \(0, 1\]"),
    (lambda: zp.make_train(zp.Config(env_id="Pendulum-v1")), "ZP here needs discrete actions"),
    (lambda: zp.make_train(zp.Config(env_id="Breakout-MinAtar")), "needs flat observations"),
])
def test_bad_input_is_a_clear_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
