"""Facts about the losses, targets and episode ends of SAC, TD3 and i-SAC, checked against independent references.

Every expected number is computed here, in float64 NumPy, from the papers' equations:
network outputs come from the real networks' `apply`, the arithmetic is this file's own.

- SAC (Haarnoja et al., 2018, arXiv 1812.05905): the soft Q target and twin critic loss
  (J_Q, Sec. 4.2, with clipped double-Q), the actor loss J_pi (Sec. 4.2) with the
  tanh-Gaussian log-likelihood of appendix C, the temperature loss (eq. 18).
- TD3 (Fujimoto et al., 2018, arXiv 1802.09477): target policy smoothing (eq. 14), the
  clipped double-Q target (eq. 10), the deterministic policy loss on Q_1 and the
  delayed actor and target updates (Algorithm 1).
- i-SAC: K critic pairs, pair k on the soft target of frozen pair k - 1 (isac.py's docstring).

Whole gradient steps are checked through the pieces each `make_train` hands to
`off_policy.make_trainer` (captured by monkeypatching it), with spies that only record
the keys the step drew, so that the sampled actions can be recomputed here.

Episode ends are checked on the probe environments of `rlzoo.envs.probes`, whose
values are known in closed form: a short run of each algorithm must learn them, to a
tolerance that excludes the values each classic mistake produces (ignoring
termination, treating truncation as termination, bootstrapping from the reset
observation, frozen target networks).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import off_policy, replay
from rlzoo.algorithms import isac, sac, td3
from rlzoo.envs.probes import MISTAKES, probe_values
from rlzoo.networks import DeterministicActor, SquashedGaussianActor, TwinCritic
from rlzoo.off_policy import twin_critic_loss

# --------------------------------------------------------------------------- NumPy references


def f64(x: Any) -> np.ndarray:
    return np.asarray(x, np.float64)


def tanh_gaussian_reference(mean: np.ndarray, log_std: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a = tanh(u), u = mu + sigma eps, and log pi(a|s) = log N(u; mu, sigma) - sum_i log(1 - tanh(u_i)^2)
    (SAC, appendix C): ([B, A], [B])."""
    mean, log_std, eps = f64(mean), f64(log_std), f64(eps)
    u = mean + np.exp(log_std) * eps
    log_normal = np.sum(-0.5 * eps ** 2 - log_std - 0.5 * np.log(2.0 * np.pi), axis=-1)
    return np.tanh(u), log_normal - np.sum(np.log(1.0 - np.tanh(u) ** 2), axis=-1)


def soft_q_target_reference(reward, terminated, gamma: float, next_q, next_log_prob, alpha: float) -> np.ndarray:
    """y = r + gamma (1 - term) (min_j Q_bar_j(s', a') - alpha log pi(a'|s')) (SAC J_Q with the soft value V(s'))."""
    bootstrap = f64(next_q).min(axis=0) - alpha * f64(next_log_prob)
    return f64(reward) + gamma * (1.0 - f64(terminated)) * bootstrap


def clipped_double_q_target_reference(reward, terminated, gamma: float, next_q) -> np.ndarray:
    """y = r + gamma (1 - term) min_j Q_bar_j(s', a') (TD3 eq. 10)."""
    return f64(reward) + gamma * (1.0 - f64(terminated)) * f64(next_q).min(axis=0)


def twin_critic_loss_reference(q, target) -> float:
    """sum_j mean_i (Q_j(s_i, a_i) - y_i)^2 / 2 over the twin critics (J_Q, one half of the squared error)."""
    return float(np.sum(np.mean(0.5 * (f64(q) - f64(target)) ** 2, axis=-1)))


def smoothed_action_reference(target_action, eps, sigma: float, noise_clip: float) -> np.ndarray:
    """a' = clip(mu_bar(s') + clip(sigma eps, -c, c), -1, 1), eps ~ N(0, 1) (TD3 eq. 14, actions in [-1, 1])."""
    return np.clip(f64(target_action) + np.clip(sigma * f64(eps), -noise_clip, noise_clip), -1.0, 1.0)


def temperature_loss_reference(log_alpha: float, log_prob, target_entropy: float) -> float:
    """J(alpha) = E[-alpha log pi(a|s) - alpha H_target] (SAC eq. 18), taken on log alpha."""
    return float(-log_alpha * np.mean(f64(log_prob) + target_entropy))


def polyak_reference(target, online, tau: float) -> np.ndarray:
    """theta_bar <- (1 - tau) theta_bar + tau theta."""
    return (1.0 - tau) * f64(target) + tau * f64(online)


# --------------------------------------------------------------------------- inputs


def perturbed(params: Any, key: jax.Array, scale: float = 0.3) -> Any:
    """params plus N(0, scale^2) on every leaf: distinct networks (online vs target, twin vs twin, head vs head)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def filled_buffer(key: jax.Array, obs_dim: int, action_dim: int, rows: int = 8,
                  num_envs: int = 4) -> replay.ReplayState:
    """A full buffer of random transitions: about 35% terminated, 30% of the others truncated."""
    buffer = replay.init_transitions(jnp.zeros((obs_dim,)), jnp.zeros((action_dim,)), rows, num_envs)
    for row_key in jax.random.split(key, rows):
        k = jax.random.split(row_key, 6)
        terminated = jax.random.bernoulli(k[3], 0.35, (num_envs,))
        buffer = replay.add(buffer, replay.Transition(
            obs=jax.random.normal(k[0], (num_envs, obs_dim)),
            action=jax.random.uniform(k[1], (num_envs, action_dim), minval=-0.95, maxval=0.95),
            reward=jax.random.normal(k[2], (num_envs,)),
            terminated=terminated,
            truncated=jax.random.bernoulli(k[4], 0.3, (num_envs,)) & ~terminated,
            next_obs=jax.random.normal(k[5], (num_envs, obs_dim))))
    return buffer


def captured_pieces(module: Any, config: Any, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The init_learner and gradient_step that `module.make_train(config)` hands to `off_policy.make_trainer`."""
    pieces = {}
    real_make_trainer = off_policy.make_trainer

    def capture(config, vec_env, init_learner, explore, gradient_step, act):
        pieces.update(init_learner=init_learner, gradient_step=gradient_step, vec_env=vec_env)
        return real_make_trainer(config, vec_env, init_learner, explore, gradient_step, act)

    monkeypatch.setattr(off_policy, "make_trainer", capture)
    module.make_train(config)
    return SimpleNamespace(**pieces)


def spy_on_batches(monkeypatch: pytest.MonkeyPatch, recorded: dict) -> None:
    """Records in `recorded["batches"]` every minibatch that `off_policy.sample_batch` draws, passed on unchanged."""
    real_sample_batch = off_policy.sample_batch

    def spy(config, buffer, key, gamma):
        batch, discount = real_sample_batch(config, buffer, key, gamma)
        recorded["batches"].append(batch)
        return batch, discount

    monkeypatch.setattr(off_policy, "sample_batch", spy)


def spy_on_keys(monkeypatch: pytest.MonkeyPatch, recorded: dict, module: Any, name: str, key_position: int) -> None:
    """Records in `recorded["keys"]` the PRNG key of every call of the sampler `module.name`, passed on unchanged."""
    real = getattr(module, name)

    def spy(*args):
        recorded["keys"].append(args[key_position])
        return real(*args)

    monkeypatch.setattr(module, name, spy)


def recorded_step(gradient_step: Any, recorded: dict) -> Any:
    """`gradient_step`, jitted, also returning what the spies recorded while it was traced."""

    def step(learner, buffer, key, hp):
        recorded["batches"], recorded["keys"] = [], []
        new, stats = gradient_step(learner, buffer, key, hp)
        return new, stats, dict(recorded)

    return jax.jit(step)


def one_step_learner(pieces: SimpleNamespace, key: jax.Array, hp: Any, **replace: Any) -> Any:
    """A learner from the captured `init_learner` with every network perturbed apart (online != target)."""
    obs = jnp.zeros((pieces.vec_env.num_envs, *pieces.vec_env.spec.obs_shape))
    actor_key, critic_key, *perturb_keys = jax.random.split(key, 6)
    learner = pieces.init_learner(actor_key, critic_key, obs, hp)
    fields = [f for f in ("actor_params", "critic_params", "target_actor_params", "target_critic_params")
              if f in learner._fields]
    learner = learner._replace(**{f: perturbed(getattr(learner, f), k) for f, k in zip(fields, perturb_keys)})
    return learner._replace(**replace)


# --------------------------------------------------------------------------- the shared minibatch and critic loss


def test_minibatch_discount_is_gamma_times_one_minus_terminated():
    """off_policy.sample_batch: terminated rows get discount 0, truncated and ordinary rows gamma.

    Catches a discount that ignores termination (gamma everywhere) or treats truncation as termination."""
    buffer = filled_buffer(jax.random.PRNGKey(0), obs_dim=3, action_dim=1)
    config = sac.Config(batch_size=256, learning_starts=256, buffer_size=256)  # only batch_size is read
    batch, discount = off_policy.sample_batch(config, buffer, jax.random.PRNGKey(1), 0.9)
    terminated, truncated = np.asarray(batch.terminated), np.asarray(batch.truncated)
    assert terminated.any() and truncated.any() and (~terminated & ~truncated).any()
    np.testing.assert_allclose(np.asarray(discount), 0.9 * (1.0 - terminated), rtol=1e-7)


def test_twin_critic_loss_is_half_the_squared_error_summed_over_both_critics():
    """off_policy.twin_critic_loss = sum_j E[(Q_j(s, a) - y)^2] / 2 on the real TwinCritic.

    Catches a loss on one critic only, on the mean of the twins, or without the 1/2."""
    critic = TwinCritic((8,))
    obs, action = jax.random.normal(jax.random.PRNGKey(0), (16, 3)), jax.random.uniform(
        jax.random.PRNGKey(1), (16, 2), minval=-1, maxval=1)
    params = perturbed(critic.init(jax.random.PRNGKey(2), obs, action), jax.random.PRNGKey(3))
    target = jax.random.normal(jax.random.PRNGKey(4), (16,))
    q = critic.apply(params, obs, action)
    loss, q_mean = twin_critic_loss(critic, params, obs, action, target)
    np.testing.assert_allclose(float(loss), twin_critic_loss_reference(q, target), rtol=1e-5)
    np.testing.assert_allclose(float(q_mean), f64(q).mean(), rtol=1e-5, atol=1e-6)
    assert np.abs(f64(q[0]) - f64(q[1])).max() > 0.1  # the twins differ, so one critic alone would not pass


# --------------------------------------------------------------------------- SAC's losses


def test_sac_soft_q_target_is_reward_plus_discounted_min_q_minus_alpha_log_pi():
    """sac.soft_q_target against y = r + gamma (1 - term) (min_j Q_bar_j - alpha log pi) with random inputs.

    Catches max or mean instead of min over the twins, + alpha log pi, or a discount applied to r."""
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    reward, next_log_prob = jax.random.normal(k[0], (64,)), jax.random.normal(k[1], (64,))
    next_q = jax.random.normal(k[2], (2, 64))
    terminated = jax.random.bernoulli(k[3], 0.3, (64,))
    discount = 0.9 * (1.0 - terminated.astype(jnp.float32))
    target = sac.soft_q_target(reward, discount, next_q, next_log_prob, jnp.asarray(0.7))
    expected = soft_q_target_reference(reward, terminated, 0.9, next_q, next_log_prob, 0.7)
    np.testing.assert_allclose(f64(target), expected, rtol=1e-5, atol=1e-6)


def hand_q(obs: jax.Array, action: jax.Array) -> jax.Array:
    """Two different critics written by hand, [2, B]: Q_1 = sum(obs) - |a - 0.3|^2, Q_2 = 0.5 - |a + 0.2|^2."""
    q1 = obs.sum(-1) - jnp.sum((action - 0.3) ** 2, -1)
    q2 = 0.5 - jnp.sum((action + 0.2) ** 2, -1)
    return jnp.stack([q1, q2])


def test_sac_actor_loss_is_alpha_log_pi_minus_min_q_with_the_tanh_gaussian_log_likelihood():
    """sac.actor_loss = E[alpha log pi(a|s) - min_j Q_j(s, a)], a = tanh(mu + sigma eps), on a 3-D action.

    The actions and log-probs are recomputed from the key (eps = N(0, 1) draws) with the
    change of variables of appendix C. Catches a missing or wrong tanh Jacobian term,
    sigma taken as log sigma, max instead of min, or the sign of the entropy term."""
    actor = SquashedGaussianActor(3, (16,))
    obs = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
    params = perturbed(actor.init(jax.random.PRNGKey(1), obs), jax.random.PRNGKey(2), scale=0.5)
    key, alpha = jax.random.PRNGKey(3), 0.4
    loss, log_prob = sac.actor_loss(actor, params, hand_q, obs, key, jnp.asarray(alpha))

    mean, log_std = actor.apply(params, obs)
    action, expected_log_prob = tanh_gaussian_reference(mean, log_std, jax.random.normal(key, mean.shape))
    assert f64(log_std).std() > 0.1 and np.abs(f64(mean)).max() > 0.3  # a policy that varies with s
    np.testing.assert_allclose(f64(log_prob), expected_log_prob, rtol=1e-4, atol=1e-4)
    q = f64(hand_q(jnp.asarray(obs), jnp.asarray(action, jnp.float32)))
    expected = np.mean(alpha * expected_log_prob - q.min(axis=0))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target_entropy, alpha_rises", [(2.0, True), (-6.0, False)])
def test_sac_temperature_loss_raises_alpha_when_the_entropy_is_below_the_target(target_entropy, alpha_rises):
    """sac.temperature_loss equals -log alpha E[log pi + H_target] (eq. 18) and its gradient step raises
    alpha exactly when the entropy -E[log pi] is below the target. Catches the sign of the loss."""
    log_prob = jax.random.normal(jax.random.PRNGKey(0), (128,)) + 1.0  # entropy about -1
    log_alpha = jnp.asarray(np.log(0.3), jnp.float32)
    loss, grad = jax.value_and_grad(sac.temperature_loss)(log_alpha, log_prob, target_entropy)
    np.testing.assert_allclose(float(loss), temperature_loss_reference(np.log(0.3), log_prob, target_entropy),
                               rtol=1e-5)
    entropy = -f64(log_prob).mean()
    assert (entropy < target_entropy) == alpha_rises
    assert (float(grad) < 0) == alpha_rises  # gradient descent on log alpha moves against the gradient


# --------------------------------------------------------------------------- TD3's policy loss


def test_td3_policy_loss_is_minus_q1_of_the_deterministic_action():
    """td3.deterministic_policy_loss = -E[Q_1(s, mu(s))] (Algorithm 1: the actor ascends Q_theta1, not min Q).

    Catches the use of min_j Q_j, of Q_2, or of the wrong sign."""
    actor = DeterministicActor(2, (16,))
    obs = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
    params = perturbed(actor.init(jax.random.PRNGKey(1), obs), jax.random.PRNGKey(2), scale=0.5)
    loss = td3.deterministic_policy_loss(actor, params, hand_q, obs)
    q = f64(hand_q(obs, actor.apply(params, obs)))
    assert np.abs(q[0].mean() - q.min(axis=0).mean()) > 0.1
    np.testing.assert_allclose(float(loss), -q[0].mean(), rtol=1e-5)


# --------------------------------------------------------------------------- whole gradient steps


ONE_STEP = dict(env_id="Pendulum-v1", num_envs=4, buffer_size=32, batch_size=16, learning_starts=16,
                hidden_sizes=(16, 16))


def changed(new: Any, old: Any) -> bool:
    """Whether any leaf of two same-shaped parameter trees differs."""
    return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True))


def critic_values(critic: TwinCritic, params: Any, obs: jax.Array, action: Any) -> np.ndarray:
    return f64(critic.apply(params, obs, jnp.asarray(action, jnp.float32)))


@pytest.mark.parametrize("target_entropy_per_dim", [3.0, -3.0])
def test_sac_gradient_step_matches_the_numpy_reference(monkeypatch, target_entropy_per_dim):
    """One SAC gradient step from perturbed (online != target) networks, against NumPy.

    Checks the critic loss (soft target from the *target* critics at (s', a' ~ pi(.|s')),
    gamma (1 - term), alpha log pi), the actor loss against the *updated* critics, the
    Polyak step of the targets, and that alpha rises exactly when the entropy is below
    the target (eq. 18). Catches a target from the online critics or at s instead of s',
    a discount that ignores termination or truncates on truncation, a wrong Polyak
    direction, and the temperature's sign."""
    config = sac.Config(**ONE_STEP)
    pieces, recorded = captured_pieces(sac, config, monkeypatch), {}
    spy_on_batches(monkeypatch, recorded)
    spy_on_keys(monkeypatch, recorded, sac, "sample_action", key_position=3)
    hp = sac.HParams(gamma=0.9, tau=0.2, alpha_lr=0.01, target_entropy_per_dim=target_entropy_per_dim)
    learner = one_step_learner(pieces, jax.random.PRNGKey(0), hp, log_alpha=jnp.log(jnp.asarray(0.5)))
    buffer = filled_buffer(jax.random.PRNGKey(1), obs_dim=3, action_dim=1)

    new, stats, recorded = recorded_step(pieces.gradient_step, recorded)(learner, buffer, jax.random.PRNGKey(2), hp)

    (batch,), (next_key, actor_key) = recorded["batches"], recorded["keys"]
    actor, critic = SquashedGaussianActor(1, (16, 16)), TwinCritic((16, 16))
    alpha = 0.5
    mean, log_std = actor.apply(learner.actor_params, batch.next_obs)
    next_action, next_log_prob = tanh_gaussian_reference(mean, log_std, jax.random.normal(next_key, mean.shape))
    next_q = critic_values(critic, learner.target_critic_params, batch.next_obs, next_action)
    target = soft_q_target_reference(batch.reward, batch.terminated, 0.9, next_q, next_log_prob, alpha)
    q = critic_values(critic, learner.critic_params, batch.obs, batch.action)
    assert np.asarray(batch.terminated).any() and np.asarray(batch.truncated).any()
    np.testing.assert_allclose(float(stats["critic_loss"]), twin_critic_loss_reference(q, target), rtol=1e-4)

    mean, log_std = actor.apply(learner.actor_params, batch.obs)
    action, log_prob = tanh_gaussian_reference(mean, log_std, jax.random.normal(actor_key, mean.shape))
    new_q = critic_values(critic, new.critic_params, batch.obs, action)
    np.testing.assert_allclose(float(stats["actor_loss"]), np.mean(alpha * log_prob - new_q.min(axis=0)),
                               rtol=1e-4, atol=1e-5)

    for old_target, online, new_target in zip(jax.tree.leaves(learner.target_critic_params),
                                              jax.tree.leaves(new.critic_params),
                                              jax.tree.leaves(new.target_critic_params), strict=True):
        np.testing.assert_allclose(f64(new_target), polyak_reference(old_target, online, 0.2), rtol=1e-5, atol=1e-6)

    # Adam's first step moves log alpha by alpha_lr against the sign of the gradient, -E[log pi] - H_target.
    entropy_below_target = -log_prob.mean() < target_entropy_per_dim  # H_target = target_entropy_per_dim * 1 dim
    step = float(new.log_alpha - learner.log_alpha)
    np.testing.assert_allclose(step, 0.01 if entropy_below_target else -0.01, rtol=1e-3)
    assert entropy_below_target == (target_entropy_per_dim > 0)


@pytest.mark.parametrize("policy_delay, delayed", [(1.0, True), (2.0, False)])
def test_td3_gradient_step_matches_the_numpy_reference(monkeypatch, policy_delay, delayed):
    """One TD3 gradient step from perturbed networks (actor != target actor, critics != targets), against NumPy.

    Checks the critic loss on y = r + gamma (1 - term) min_j Q_bar_j(s', a') with the
    smoothed action a' = clip(mu_bar(s') + clip(sigma eps, -c, c), -1, 1) of the *target*
    actor, then the delayed update: on a due step the actor loss -Q_1(s, mu(s)) of the
    updated critic and Polyak steps of both targets; otherwise nothing but the critics
    moves. Catches the online actor or critics in the target, max or Q_1 instead of
    min, missing smoothing or clipping, a discount that ignores termination, min Q in the
    policy loss, and actor or target updates off their schedule."""
    config = td3.Config(**ONE_STEP)
    pieces, recorded = captured_pieces(td3, config, monkeypatch), {}
    spy_on_batches(monkeypatch, recorded)
    spy_on_keys(monkeypatch, recorded, td3, "smoothed_target_action", key_position=1)
    hp = td3.HParams(gamma=0.9, tau=0.2, policy_noise=0.4, noise_clip=0.3, policy_delay=policy_delay)
    learner = one_step_learner(pieces, jax.random.PRNGKey(0), hp)
    buffer = filled_buffer(jax.random.PRNGKey(1), obs_dim=3, action_dim=1)

    new, stats, recorded = recorded_step(pieces.gradient_step, recorded)(learner, buffer, jax.random.PRNGKey(2), hp)

    (batch,), (noise_key,) = recorded["batches"], recorded["keys"]
    actor, critic = DeterministicActor(1, (16, 16)), TwinCritic((16, 16))
    target_action = f64(actor.apply(learner.target_actor_params, batch.next_obs))
    eps = jax.random.normal(noise_key, target_action.shape)
    next_action = smoothed_action_reference(target_action, eps, 0.4, 0.3)
    assert (np.abs(0.4 * f64(eps)) > 0.3).any() and (np.abs(target_action) > 0.2).any()  # both clips matter
    next_q = critic_values(critic, learner.target_critic_params, batch.next_obs, next_action)
    target = clipped_double_q_target_reference(batch.reward, batch.terminated, 0.9, next_q)
    q = critic_values(critic, learner.critic_params, batch.obs, batch.action)
    np.testing.assert_allclose(float(stats["critic_loss"]), twin_critic_loss_reference(q, target), rtol=1e-4)

    assert changed(new.critic_params, learner.critic_params)
    if not delayed:
        assert not changed(new.actor_params, learner.actor_params)
        assert not changed(new.target_actor_params, learner.target_actor_params)
        assert not changed(new.target_critic_params, learner.target_critic_params)
        return
    new_q = critic_values(critic, new.critic_params, batch.obs, actor.apply(learner.actor_params, batch.obs))
    np.testing.assert_allclose(float(stats["actor_loss"]), -new_q[0].mean(), rtol=1e-4)
    assert np.abs(new_q[0].mean() - new_q.min(axis=0).mean()) > 1e-2  # Q_1 is not min Q here
    assert changed(new.actor_params, learner.actor_params)
    for old, online, followed in [(learner.target_actor_params, new.actor_params, new.target_actor_params),
                                  (learner.target_critic_params, new.critic_params, new.target_critic_params)]:
        for o, p, f in zip(jax.tree.leaves(old), jax.tree.leaves(online), jax.tree.leaves(followed), strict=True):
            np.testing.assert_allclose(f64(f), polyak_reference(o, p, 0.2), rtol=1e-5, atol=1e-6)


def test_isac_gradient_step_with_three_critic_pairs_matches_the_numpy_reference(monkeypatch):
    """One i-SAC step with K = 3 distinct online pairs and distinct frozen pairs, against NumPy.

    L = sum_k sum_j E[(Q_{k,j}(s, a) - y_k)^2] / 2, y_k = r + gamma (1 - term)
    (min_j Q_bar_{k-1,j}(s', a') - alpha log pi(a'|s')), one a' for all pairs (isac.py).
    Independent of SAC's helpers, unlike the K = 1 == SAC test. Catches pair k regressing on
    its own target (Q_bar_k) or on the wrong neighbour, a target taken from the online pairs,
    a loss on the last pair only, and an actor that does not follow the newest pair Q_K."""
    config = isac.Config(num_heads=3, **ONE_STEP)
    pieces, recorded = captured_pieces(isac, config, monkeypatch), {}
    spy_on_batches(monkeypatch, recorded)
    spy_on_keys(monkeypatch, recorded, sac, "sample_action", key_position=3)
    hp = isac.HParams(gamma=0.9, target_period=10.0, roll_period=100.0)  # no window move on step 1
    learner = one_step_learner(pieces, jax.random.PRNGKey(0), hp, log_alpha=jnp.log(jnp.asarray(0.5)))
    buffer = filled_buffer(jax.random.PRNGKey(1), obs_dim=3, action_dim=1)

    new, stats, recorded = recorded_step(pieces.gradient_step, recorded)(learner, buffer, jax.random.PRNGKey(2), hp)

    (batch,), (next_key, actor_key) = recorded["batches"], recorded["keys"]
    actor, critic = SquashedGaussianActor(1, (16, 16)), TwinCritic((16, 16))
    head = lambda tree, k: jax.tree.map(lambda x: x[k], tree)  # noqa: E731
    mean, log_std = actor.apply(learner.actor_params, batch.next_obs)
    next_action, next_log_prob = tanh_gaussian_reference(mean, log_std, jax.random.normal(next_key, mean.shape))
    expected_loss = 0.0
    for k in range(3):  # online pair k (Q_{k+1}) regresses on frozen pair k (Q_bar_k)
        next_q = critic_values(critic, head(learner.target_critic_params, k), batch.next_obs, next_action)
        target = soft_q_target_reference(batch.reward, batch.terminated, 0.9, next_q, next_log_prob, 0.5)
        q = critic_values(critic, head(learner.critic_params, k), batch.obs, batch.action)
        expected_loss += twin_critic_loss_reference(q, target)
    np.testing.assert_allclose(float(stats["critic_loss"]), expected_loss, rtol=1e-4)

    mean, log_std = actor.apply(learner.actor_params, batch.obs)
    action, log_prob = tanh_gaussian_reference(mean, log_std, jax.random.normal(actor_key, mean.shape))
    newest_q = critic_values(critic, head(new.critic_params, 2), batch.obs, action)
    np.testing.assert_allclose(float(stats["actor_loss"]), np.mean(0.5 * log_prob - newest_q.min(axis=0)),
                               rtol=1e-4, atol=1e-5)
    other_q = critic_values(critic, head(new.critic_params, 0), batch.obs, action)
    assert np.abs(other_q.min(axis=0).mean() - newest_q.min(axis=0).mean()) > 1e-2  # the pairs do differ
    for old, now in zip(jax.tree.leaves(learner.target_critic_params), jax.tree.leaves(new.target_critic_params)):
        np.testing.assert_array_equal(now, old)  # frozen between the periodic moves (no Polyak step)


# --------------------------------------------------------------------------- episode ends on the probes

PROBE_GAMMA = 0.5
PROBE_HIDDEN = (32, 32)
PROBE_BUDGET = dict(total_timesteps=4_000, num_envs=4, learning_starts=200, batch_size=64,
                    hidden_sizes=PROBE_HIDDEN, buffer_size=4_000)
PROBE_SEEDS = 2
PROBE_IDS = {"terminate": "ProbeTerminateContinuous-v0", "truncate": "ProbeTruncateContinuous-v0"}


def probe_program(algorithm: str, ending: str) -> tuple[Any, Any, Any]:
    """(module, Config, HParams) of a short run on a probe with gamma 0.5; SAC's temperature fixed at 1e-6,
    so the entropy term of the soft target (|alpha log pi| < 1e-4) is negligible."""
    env = dict(env_id=PROBE_IDS[ending], **PROBE_BUDGET)
    if algorithm == "sac":
        return sac, sac.Config(autotune_alpha=False, **env), sac.HParams(gamma=PROBE_GAMMA, init_alpha=1e-6,
                                                                         tau=0.05)
    if algorithm == "td3":
        return td3, td3.Config(**env), td3.HParams(gamma=PROBE_GAMMA, tau=0.05, critic_lr=1e-3)
    return isac, isac.Config(num_heads=2, autotune_alpha=False, **env), isac.HParams(
        gamma=PROBE_GAMMA, init_alpha=1e-6, target_period=10.0, roll_period=50.0)


def probe_tolerance(ending: str) -> np.ndarray:
    """Per phase, a third of the distance from the true value to the nearest value of a mistake."""
    true = np.array(probe_values(PROBE_GAMMA, ending))
    gaps = np.min([np.abs(np.array(probe_values(PROBE_GAMMA, m)) - true) for m in MISTAKES[ending]], axis=0)
    return gaps / 3.0


def probe_q_values(critic_params: Any) -> np.ndarray:
    """Q(one-hot phase, a) averaged over the twins and actions a in {-1, -0.5, 0, 0.5, 1}: [..., phase].

    `critic_params` may carry leading axes (seeds, i-SAC's pairs) before the twins' axis."""
    critic = TwinCritic(PROBE_HIDDEN)
    obs = jnp.repeat(jnp.eye(2), 5, axis=0)
    action = jnp.tile(jnp.linspace(-1.0, 1.0, 5), 2)[:, None]
    leading = jax.tree.leaves(critic_params)[0].ndim - jax.tree.leaves(critic.init(
        jax.random.PRNGKey(0), obs, action))[0].ndim
    q = critic.apply
    for _ in range(leading):
        q = jax.vmap(q, in_axes=(0, None, None))
    values = f64(jax.jit(q)(critic_params, obs, action))  # [..., 2 twins, 10]
    return values.reshape(*values.shape[:-1], 2, 5).mean(axis=(-1, -3))


@pytest.fixture(scope="module", params=[(a, e) for a in ("sac", "td3", "isac") for e in ("terminate", "truncate")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def probe_run(request) -> SimpleNamespace:
    """Two seeds of one algorithm on one probe, one vmapped program; its initial and final states."""
    algorithm, ending = request.param
    module, config, hp = probe_program(algorithm, ending)
    trainer = module.make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(0), PROBE_SEEDS)
    hparams = jax.tree.map(lambda x: jnp.full((PROBE_SEEDS,), x), hp)
    initial = jax.jit(trainer.init_members)(keys, hparams)
    final, _ = jax.jit(trainer.members)(keys, hparams)
    return SimpleNamespace(algorithm=algorithm, ending=ending, initial=initial, final=final)


def test_learned_critics_match_the_closed_form_probe_values(probe_run):
    """Online and target critics (every i-SAC pair) learn probe_values(0.5, ending) on each seed.

    The tolerance is a third of the gap to the values each mistake gives, so the test
    fails if the discount ignores termination (terminate probe), if truncation is taken
    as termination or the reset observation is bootstrapped from (truncate probe), or if
    the target networks never move (the initial critics are checked to be far off)."""
    true = np.array(probe_values(PROBE_GAMMA, probe_run.ending))
    tolerance = probe_tolerance(probe_run.ending)
    for name in ("critic_params", "target_critic_params"):
        error = np.abs(probe_q_values(getattr(probe_run.final.learner, name)) - true)
        assert (error < tolerance).all(), (name, error, tolerance)
    initial_error = np.abs(probe_q_values(probe_run.initial.learner.target_critic_params) - true)
    assert (initial_error > tolerance).any(axis=-1).all(), initial_error  # frozen targets could not pass


def test_replay_stores_the_true_final_observation_and_the_episode_end(probe_run):
    """Every stored row of the probe follows the cycle: next_obs is the phase after obs, also on the last
    step of an episode (not the reset observation), and the end is stored as what it was.

    Truncate probe: rows with truncated set are steps from phase 0 into phase 1, never
    terminated. Terminate probe: terminated rows are steps from phase 0 into phase 1,
    never truncated. Catches next_obs = reset observation and swapped end flags."""
    data = probe_run.final.buffer.data
    phase = f64(data.obs).argmax(-1)
    next_phase = f64(data.next_obs).argmax(-1)
    terminated, truncated = np.asarray(data.terminated), np.asarray(data.truncated)
    np.testing.assert_array_equal(next_phase, 1 - phase)
    np.testing.assert_array_equal(f64(data.reward), phase)
    ended, other = (terminated, truncated) if probe_run.ending == "terminate" else (truncated, terminated)
    assert not other.any()
    assert ended.mean() > 0.1 and (phase[ended] == 0).all() and (next_phase[ended] == 1).all()
