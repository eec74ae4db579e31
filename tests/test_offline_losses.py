"""The offline learners' losses and targets equal the papers' equations, written here in plain NumPy.

Each test builds the algorithm's real networks on a small hand-made batch, runs the algorithm's loss, and
recomputes the expected value in float64 NumPy from the networks' outputs (their `apply`); no helper of the
algorithm file computes an expected value. The batch holds terminal transitions (rows 1 and 4) and a
time-limit cut that is not terminal (row 3), so that a target which ignores termination, or which stops
bootstrapping at a time limit, is a different number. Every test also recomputes the loss with the mistake
it guards against and asserts that this number differs, so the batch is known to tell them apart.

Papers: BC (maximum likelihood); IQL, Kostrikov et al. 2022, eqs. 5-7; TD3+BC, Fujimoto & Gu 2021, eqs. 3-4
with TD3's target smoothing; CQL(H), Kumar et al. 2020, eqs. 4-5 and appendix F; CSVE, Chen et al. 2023,
steps 1-5 of `algorithms/csve.py` (the authors' code).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import dynamics
from rlzoo.algorithms import bc, cql, csve, iql, td3_bc
from rlzoo.datasets import Dataset
from rlzoo.networks import BoundedDeterministicActor, EnsembleQ, GaussianActor, StateValue, TanhGaussianActor
from rlzoo.networks import squashed_gaussian
from rlzoo.offline import OfflineData

OBS_DIM, ACTION_DIM, LOW, HIGH = 3, 2, -2.0, 2.0
HIDDEN = (16,)
TERMINALS = np.array([0, 1, 0, 0, 1, 0], bool)  # rows 1 and 4 end in a terminal state
TIMEOUTS = np.array([0, 0, 0, 1, 0, 0], bool)  # row 3 is cut by a time limit: it still bootstraps


def hand_batch() -> Dataset:
    """Six transitions: two terminal, one cut by a time limit, rewards of both signs, actions inside [-2, 2]; the
    dtypes of `datasets.load` (bool flags)."""
    rng = np.random.default_rng(0)
    return Dataset(observations=jnp.asarray(rng.normal(size=(6, OBS_DIM)), jnp.float32),
                   actions=jnp.asarray([[1.5, -0.3], [-1.8, 0.9], [0.2, 1.1], [-0.7, -1.6], [1.9, 0.0],
                                        [-0.1, 0.4]], jnp.float32),
                   rewards=jnp.asarray([1.0, -0.5, 2.0, 0.3, -1.2, 0.7], jnp.float32),
                   next_observations=jnp.asarray(rng.normal(size=(6, OBS_DIM)), jnp.float32),
                   terminals=jnp.asarray(TERMINALS), timeouts=jnp.asarray(TIMEOUTS))


def f64(x: Any) -> np.ndarray:
    return np.asarray(x, np.float64)


def keys(n: int, seed: int = 0) -> list[jax.Array]:
    return list(jax.random.split(jax.random.PRNGKey(seed), n))


def assert_equal_and_not_mistaken(actual: Any, reference: Any, mistaken: dict[str, Any]) -> None:
    """`actual` equals the NumPy `reference` to float32 precision, and each mistaken recomputation differs from it
    by more than ten times that tolerance somewhere, so the comparison would have failed on the mistake."""
    tolerance = 1e-4 * np.abs(f64(reference)) + 1e-5
    np.testing.assert_allclose(f64(actual), reference, rtol=1e-4, atol=1e-5)
    for mistake, value in mistaken.items():
        assert (np.abs(f64(value) - f64(reference)) > 10 * tolerance).any(), f"the batch cannot tell '{mistake}' apart"


def gaussian_log_prob(actions: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log N(a; mu, diag sigma^2) summed over action dimensions: [B]."""
    z = (actions - mean) / std
    return (-0.5 * z ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def squashed_log_prob_of_u(u: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """log pi(a|s) for a = c + h tanh(u), u ~ N(mean, diag exp(log_std)^2), h the half range (SAC appendix C):
    log N(u) - sum_i log(h (1 - tanh(u_i)^2))."""
    half = (HIGH - LOW) / 2
    return gaussian_log_prob(u, mean, np.exp(log_std)) - np.log(half * (1 - np.tanh(u) ** 2)).sum(-1)


def squashed_gaussian_log_prob(actions: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """log pi(a|s) of actions inside the bounds, u = atanh((a - c) / h)."""
    centre, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    return squashed_log_prob_of_u(np.arctanh((actions - centre) / half), mean, log_std)


def bellman_target(rewards: np.ndarray, terminals: np.ndarray, gamma: float, next_value: np.ndarray) -> np.ndarray:
    """y = r + gamma (1 - term) V(s'): no bootstrap from a terminal state, bootstrap at a time limit."""
    return rewards + gamma * (1.0 - terminals) * next_value


def squared_error_per_critic(q: np.ndarray, target: np.ndarray) -> float:
    """sum_j E[(Q_j(s, a) - y)^2] for q [num_critics, B]."""
    return float(((q - target[None]) ** 2).mean(axis=1).sum())


# --------------------------------------------------------------------------- BC


def test_bc_loss_is_the_negative_mean_gaussian_log_likelihood_of_the_data_actions():
    """L = -E[log N(a; mu(s), sigma^2)] with a per-dimension sigma. Catches a flipped sign, a log-prob averaged
    instead of summed over action dimensions, and a loss on the action error alone."""
    batch = hand_batch()
    actor = GaussianActor(ACTION_DIM, LOW, HIGH, HIDDEN)
    params = actor.init(keys(1)[0], batch.observations)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray([-0.4, 0.3]) if "log_std" in jax.tree_util.keystr(path) else x, params)
    dist = actor.apply(params, batch.observations)
    mean, std, actions = f64(dist.mean()), f64(dist.stddev()), f64(batch.actions)
    np.testing.assert_allclose(std[0], np.exp([-0.4, 0.3]), rtol=1e-6)
    log_prob = gaussian_log_prob(actions, mean, std)
    loss, stats = bc.bc_loss(actor, params, batch)
    assert_equal_and_not_mistaken(loss, -log_prob.mean(), {
        "sign flipped": log_prob.mean(),
        "log-prob averaged over action dims": -log_prob.mean() / ACTION_DIM,
        "squared error": ((actions - mean) ** 2).sum(-1).mean()})
    np.testing.assert_allclose(stats["action_mse"], ((actions - mean) ** 2).mean(), rtol=1e-5)


# --------------------------------------------------------------------------- IQL


def iql_setup(seed: int = 0):
    batch = hand_batch()
    nets = iql.Networks(GaussianActor(ACTION_DIM, LOW, HIGH, HIDDEN), StateValue(HIDDEN), EnsembleQ(2, HIDDEN))
    actor_key, value_key, critic_key = keys(3, seed)
    return (batch, nets, nets.actor.init(actor_key, batch.observations), nets.value.init(value_key, batch.observations),
            nets.critic.init(critic_key, batch.observations, batch.actions))


ADVANTAGES = np.array([1.5, -1.0, 0.5, -2.0, 3.0, 0.2])  # min_j Q_bar_j(s, a) - V(s), both signs


def test_iql_value_loss_is_the_expectile_regression_of_eq_5():
    """L_V = E[|tau - 1(u < 0)| u^2], u = min_j Q_bar_j(s, a) - V(s) (IQL eq. 5), tau = 0.8. Catches u of the
    opposite sign (V regressed to a lower expectile) and the weights swapped."""
    batch, nets, _, value_params, _ = iql_setup()
    v = f64(nets.value.apply(value_params, batch.observations))
    target_q = v + ADVANTAGES
    hp = iql.HParams(expectile=0.8)
    loss, _ = iql.value_loss(nets, value_params, jnp.asarray(target_q, jnp.float32), batch, hp)
    u = target_q - v
    weight = np.where(u < 0, 1 - 0.8, 0.8)
    assert_equal_and_not_mistaken(loss, (weight * u ** 2).mean(), {
        "u = V - Q": (np.where(-u < 0, 0.2, 0.8) * u ** 2).mean(),
        "weights swapped": (np.where(u < 0, 0.8, 0.2) * u ** 2).mean()})


def test_iql_advantage_weights_are_exp_beta_advantage_clipped_at_w_max_without_gradient():
    """w = min(exp(beta (min_j Q_bar_j(s, a) - V(s))), w_max) (IQL eq. 7), beta 2, w_max 5 (rows 0 and 4 clip).
    Catches the advantage's sign flipped, a missing clip, and a gradient reaching V through the weights."""
    batch, nets, _, value_params, _ = iql_setup()
    v = f64(nets.value.apply(value_params, batch.observations))
    target_q = jnp.asarray(v + ADVANTAGES, jnp.float32)
    hp = iql.HParams(beta=2.0, max_weight=5.0)
    weights = iql.advantage_weights(nets, value_params, target_q, batch, hp)
    assert_equal_and_not_mistaken(weights, np.minimum(np.exp(2.0 * ADVANTAGES), 5.0), {
        "advantage V - Q": np.minimum(np.exp(-2.0 * ADVANTAGES), 5.0),
        "no clip": np.exp(2.0 * ADVANTAGES)})
    gradient = jax.grad(lambda p: iql.advantage_weights(nets, p, target_q, batch, hp).sum())(value_params)
    assert all(np.all(g == 0) for g in jax.tree.leaves(gradient))


def test_iql_actor_loss_is_the_advantage_weighted_negative_log_likelihood():
    """L_pi = -E[w log pi(a|s)] (IQL eq. 7) with the Gaussian policy. Catches a flipped sign and unweighted BC."""
    batch, nets, actor_params, _, _ = iql_setup()
    weights = np.minimum(np.exp(2.0 * ADVANTAGES), 5.0)
    dist = nets.actor.apply(actor_params, batch.observations)
    log_prob = gaussian_log_prob(f64(batch.actions), f64(dist.mean()), f64(dist.stddev()))
    loss, _ = iql.actor_loss(nets, actor_params, jnp.asarray(weights, jnp.float32), batch)
    assert_equal_and_not_mistaken(loss, -(weights * log_prob).mean(), {
        "sign flipped": (weights * log_prob).mean(), "unweighted": -log_prob.mean()})


def test_iql_critic_regresses_each_q_on_r_plus_discounted_v_of_the_next_state_cut_at_terminals():
    """L_Q = sum_j E[(c r + gamma (1 - term) V(s') - Q_j(s, a))^2] (IQL eq. 6), reward scale c = 2.5, gamma 0.9.
    Catches bootstrapping from terminal states, not bootstrapping at time limits, V(s) in place of V(s'),
    and the reward scale left out."""
    batch, nets, _, value_params, critic_params = iql_setup()
    r, term, timeout = f64(batch.rewards), f64(batch.terminals), f64(batch.timeouts)
    next_v = f64(nets.value.apply(value_params, batch.next_observations))
    q = f64(nets.critic.apply(critic_params, batch.observations, batch.actions))
    loss, _ = iql.critic_loss(nets, critic_params, value_params, batch, 2.5, iql.HParams(gamma=0.9))
    expected = squared_error_per_critic(q, bellman_target(2.5 * r, term, 0.9, next_v))
    assert_equal_and_not_mistaken(loss, expected, {
        "ignores termination": squared_error_per_critic(q, bellman_target(2.5 * r, 0 * term, 0.9, next_v)),
        "stops at time limits": squared_error_per_critic(q, bellman_target(2.5 * r, np.maximum(term, timeout), 0.9,
                                                                           next_v)),
        "V(s)": squared_error_per_critic(q, bellman_target(2.5 * r, term, 0.9,
                                                           f64(nets.value.apply(value_params, batch.observations)))),
        "unscaled reward": squared_error_per_critic(q, bellman_target(r, term, 0.9, next_v))})


def test_iql_reward_scale_is_1000_over_the_spread_of_episode_returns():
    """IQL's locomotion scaling: 1000 / (max - min) over episodes ending at a terminal or a time limit."""
    batch = hand_batch()  # episodes end at rows 1, 3 and 4: returns 0.5, 2.3, -1.2 (row 5 never ends)
    assert iql.reward_scale_of(batch) == pytest.approx(1000.0 / (2.3 - -1.2), rel=1e-5)


# --------------------------------------------------------------------------- TD3+BC


def td3_bc_setup():
    """Online and target networks from different keys; the target actor's head biased to +-2.5 so that its
    actions sit near the bounds and the clip of the smoothed action binds."""
    batch = hand_batch()
    nets = td3_bc.Networks(BoundedDeterministicActor(ACTION_DIM, LOW, HIGH, HIDDEN), EnsembleQ(2, HIDDEN))
    actor_key, critic_key, target_actor_key, target_critic_key = keys(4)
    target_actor = nets.actor.init(target_actor_key, batch.observations)
    target_actor["params"]["Dense_1"]["bias"] = jnp.asarray([2.5, -2.5])
    learner = td3_bc.Learner(nets.actor.init(actor_key, batch.observations),
                             nets.critic.init(critic_key, batch.observations, batch.actions), target_actor,
                             nets.critic.init(target_critic_key, batch.observations, batch.actions), None, None,
                             jnp.zeros((), jnp.int32))
    return batch, nets, learner


def test_td3_bc_critic_target_uses_the_smoothed_target_action_and_the_min_of_the_target_critics():
    """y = r + gamma (1 - term) min_j Q_bar_j(s', a'), a' = clip(pi_bar(s') + clip(sigma h eps, -c h, c h), low,
    high), h the half range (TD3); L_Q = sum_j E[(y - Q_j(s, a))^2]. sigma 0.6, c 0.25, gamma 0.9. Catches
    bootstrapping from terminal states, no smoothing, unclipped noise, the online critics in the target, and the
    max of the critics in place of the min."""
    batch, nets, learner = td3_bc_setup()
    hp = td3_bc.HParams(gamma=0.9, policy_noise=0.6, noise_clip=0.25)
    key = keys(1, seed=3)[0]
    half = (HIGH - LOW) / 2
    target_action = f64(nets.actor.apply(learner.target_actor_params, batch.next_observations))
    eps = f64(jax.random.normal(key, target_action.shape))
    noise = np.clip(0.6 * half * eps, -0.25 * half, 0.25 * half)
    next_action = np.clip(target_action + noise, LOW, HIGH)
    assert (np.abs(0.6 * half * eps) > 0.25 * half).any() and (np.abs(target_action + noise) > HIGH).any()
    np.testing.assert_allclose(td3_bc.smoothed_target_action(nets, learner.target_actor_params,
                                                             batch.next_observations, key, (LOW, HIGH), hp),
                               next_action, rtol=1e-5, atol=1e-6)

    def target_q(params, action):
        return f64(nets.critic.apply(params, batch.next_observations, jnp.asarray(action, jnp.float32)))

    r, term = f64(batch.rewards), f64(batch.terminals)
    q = f64(nets.critic.apply(learner.critic_params, batch.observations, batch.actions))
    next_q = target_q(learner.target_critic_params, next_action)
    loss, _ = td3_bc.critic_loss(nets, learner.critic_params, learner, batch, key, (LOW, HIGH), hp)
    assert_equal_and_not_mistaken(loss, squared_error_per_critic(q, bellman_target(r, term, 0.9, next_q.min(0))), {
        "ignores termination": squared_error_per_critic(q, bellman_target(r, 0 * term, 0.9, next_q.min(0))),
        "no smoothing": squared_error_per_critic(q, bellman_target(
            r, term, 0.9, target_q(learner.target_critic_params, target_action).min(0))),
        "online critics": squared_error_per_critic(q, bellman_target(
            r, term, 0.9, target_q(learner.critic_params, next_action).min(0))),
        "max of critics": squared_error_per_critic(q, bellman_target(r, term, 0.9, next_q.max(0)))})


@pytest.mark.parametrize("alpha", [2.5, 0.0])
def test_td3_bc_actor_loss_is_eq_3_with_lambda_alpha_over_mean_abs_q(alpha):
    """L_pi = -lambda E[Q_1(s, pi(s))] + E[||pi(s) - a||^2], lambda = alpha / E|Q_1(s, pi(s))| (TD3+BC eqs. 3-4,
    as the authors' code, with lambda computed on the policy's actions). alpha = 0 leaves pure behaviour cloning
    (the learning test's control). The critic's output is shifted so that Q_1 takes both signs on the batch.
    Catches the Q term's sign flipped, lambda without the mean |Q|, and lambda on the mean of signed Q."""
    batch, nets, learner = td3_bc_setup()
    action = nets.actor.apply(learner.actor_params, batch.observations)
    shift = jnp.median(nets.critic.apply(learner.critic_params, batch.observations, action)[0])
    learner = learner._replace(critic_params=jax.tree_util.tree_map_with_path(
        lambda path, x: x - shift if path[-1].key == "bias" and x.shape[-1] == 1 else x, learner.critic_params))
    q1 = f64(nets.critic.apply(learner.critic_params, batch.observations, action))[0]
    assert (q1 > 0).any() and (q1 < 0).any(), q1
    bc_term = ((f64(action) - f64(batch.actions)) ** 2).sum(-1).mean()
    lam = alpha / np.abs(q1).mean()
    loss, stats = td3_bc.actor_loss(nets, learner.actor_params, learner.critic_params, batch,
                                    td3_bc.HParams(alpha=alpha))
    mistaken = {"Q term's sign flipped": lam * q1.mean() + bc_term,
                "lambda = alpha": -alpha * q1.mean() + bc_term,
                "lambda on signed Q": -alpha / q1.mean() * q1.mean() + bc_term} if alpha else {}
    assert_equal_and_not_mistaken(loss, -lam * q1.mean() + bc_term, mistaken)
    np.testing.assert_allclose(stats["lambda"], lam, rtol=1e-5)
    np.testing.assert_allclose(stats["bc_loss"], bc_term, rtol=1e-5)


# --------------------------------------------------------------------------- CQL


def cql_setup(seed: int = 0):
    batch = hand_batch()
    nets = cql.Networks(TanhGaussianActor(ACTION_DIM, HIDDEN), EnsembleQ(2, HIDDEN))
    actor_key, critic_key, target_key = keys(3, seed)
    critic_params = nets.critic.init(critic_key, batch.observations, batch.actions)
    log_alphas = (jnp.log(jnp.float32(0.5)), jnp.log(jnp.float32(3.0)))  # alpha 0.5, alpha' 3
    learner = cql.Learner(nets.actor.init(actor_key, batch.observations), critic_params,
                          nets.critic.init(target_key, batch.observations, batch.actions), *log_alphas, None, None, None)
    return batch, nets, learner


def policy_samples(nets, actor_params, obs, key, num: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Actions drawn from the squashed Gaussian at `obs` with `key` (the draw the learner makes), and their
    log-densities recomputed in NumPy: [B, A] and [B], or [B, num, A] and [B, num]."""
    mean, log_std = (f64(x) for x in nets.actor.apply(actor_params, obs))
    dist = squashed_gaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32), LOW, HIGH)
    actions = f64(dist.sample(seed=key, sample_shape=(num,) if num else ()))
    if num:
        actions = np.swapaxes(actions, 0, 1)
        return actions, squashed_gaussian_log_prob(actions, mean[:, None], log_std[:, None])
    return actions, squashed_gaussian_log_prob(actions, mean, log_std)


def test_cql_policy_samples_have_the_tanh_jacobian_in_their_log_density():
    """log pi(a|s) of CQL's sampler equals the Gaussian density of atanh((a - c) / h) minus sum log(h (1 -
    tanh^2)) (SAC appendix C). Catches a missing Jacobian term or one without the half range h."""
    batch, nets, learner = cql_setup()
    key = keys(1, seed=4)[0]
    actions, log_prob = cql.sample_actions(nets, learner.actor_params, batch.observations, key, (LOW, HIGH), 3)
    mean, log_std = (f64(x)[:, None] for x in nets.actor.apply(learner.actor_params, batch.observations))
    u = np.arctanh(f64(actions) / 2.0)
    gaussian = gaussian_log_prob(u, mean, np.exp(log_std))
    assert_equal_and_not_mistaken(log_prob, squashed_gaussian_log_prob(f64(actions), mean, log_std), {
        "no Jacobian": gaussian, "Jacobian without h": gaussian - np.log(1 - np.tanh(u) ** 2).sum(-1)})


def cql_logsumexp(nets, critic_params, actor_params, batch: Dataset, key: jax.Array, num: int,
                  importance_weights: bool = True) -> np.ndarray:
    """log sum_a exp Q_j(s, a) ~ logsumexp_k [Q_j(s, a_k) - log mu(a_k)] over N uniform actions (mu = 1 / range^A),
    N actions of pi at s and N at s' (mu = pi), all scored at s (CQL appendix F): [num_critics, B].
    `importance_weights=False` is the mistake of leaving out - log mu."""
    uniform_key, current_key, next_key = jax.random.split(key, 3)
    size = batch.actions.shape[0]
    uniform = f64(jax.random.uniform(uniform_key, (size, num, ACTION_DIM), minval=LOW, maxval=HIGH))
    current, current_log_prob = policy_samples(nets, actor_params, batch.observations, current_key, num)
    following, following_log_prob = policy_samples(nets, actor_params, batch.next_observations, next_key, num)
    actions = np.concatenate([uniform, current, following], axis=1)  # [B, 3N, A]
    log_mu = np.concatenate([np.full((size, num), -ACTION_DIM * math.log(HIGH - LOW)), current_log_prob,
                             following_log_prob], axis=1)
    q = np.stack([f64(nets.critic.apply(critic_params, batch.observations, jnp.asarray(actions[:, k], jnp.float32)))
                  for k in range(3 * num)], axis=-1)  # [num_critics, B, 3N]
    scores = q - log_mu[None] if importance_weights else q
    top = scores.max(-1, keepdims=True)
    return (top + np.log(np.exp(scores - top).sum(-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("lagrange, backup_entropy", [(False, False), (True, True)])
def test_cql_critic_loss_is_the_bellman_error_plus_the_cql_h_regulariser(lagrange, backup_entropy):
    """L_Q = sum_j E[(y - Q_j(s, a))^2] + w sum_j E_s[logsumexp_a Q_j(s, a) - Q_j(s, a_data)] (CQL eq. 4), y =
    r + gamma (1 - term) (min_j Q_bar_j(s', a') [- alpha log pi(a'|s')]), a' ~ pi(.|s'); with Lagrange (eq. 5) the
    regulariser is sum_j alpha' (w gap_j - tau). Catches the regulariser's sign flipped, importance weights left
    out of the log-sum-exp, bootstrapping from terminal states, and (backup_entropy) the entropy term's sign."""
    batch, nets, learner = cql_setup()
    num, gamma, weight, threshold = 2, 0.9, 5.0, 4.0
    config = cql.Config(dataset="unused.hdf5", env_id="none", num_sampled_actions=num, lagrange=lagrange,
                        backup_entropy=backup_entropy, hidden_sizes=HIDDEN)
    hp = cql.HParams(gamma=gamma, min_q_weight=weight, target_action_gap=threshold)
    key = keys(1, seed=5)[0]
    target_key, cql_key = jax.random.split(key)
    next_action, next_log_prob = policy_samples(nets, learner.actor_params, batch.next_observations, target_key)
    next_q = f64(nets.critic.apply(learner.target_critic_params, batch.next_observations,
                                   jnp.asarray(next_action, jnp.float32))).min(0)
    entropy_bonus = -0.5 * next_log_prob if backup_entropy else 0.0  # -alpha log pi, alpha = 0.5
    r, term = f64(batch.rewards), f64(batch.terminals)
    q = f64(nets.critic.apply(learner.critic_params, batch.observations, batch.actions))
    lse = cql_logsumexp(nets, learner.critic_params, learner.actor_params, batch, cql_key, num)
    gap = (lse - q).mean(axis=1)  # [num_critics]

    def regulariser(gap):
        return (3.0 * (weight * gap - threshold)).sum() if lagrange else weight * gap.sum()

    def total(target, gap):
        return squared_error_per_critic(q, target) + regulariser(gap)

    target = bellman_target(r, term, gamma, next_q + entropy_bonus)
    unweighted = cql_logsumexp(nets, learner.critic_params, learner.actor_params, batch, cql_key, num, False)
    mistaken = {
        "regulariser's sign flipped": total(target, -gap),
        "no importance weights": total(target, (unweighted - q).mean(axis=1)),
        "ignores termination": total(bellman_target(r, 0 * term, gamma, next_q + entropy_bonus), gap)}
    if backup_entropy:
        mistaken["entropy's sign flipped"] = total(bellman_target(r, term, gamma, next_q - entropy_bonus), gap)
    loss, stats = cql.critic_loss(nets, learner.critic_params, learner, batch, key, (LOW, HIGH), config, hp)
    assert_equal_and_not_mistaken(loss, total(target, gap), mistaken)
    np.testing.assert_allclose(stats["cql_gap"], gap.mean(), rtol=1e-4)


def test_cql_log_sum_exp_is_importance_sampled_over_uniform_and_policy_actions():
    """logsumexp_q equals logsumexp_k [Q(s, a_k) - log mu(a_k)] over the 3N samples (CQL appendix F). Catches the
    importance weights left out (the estimate would move by about A log(range) = 2 log 4 and the policy's
    log-densities)."""
    batch, nets, learner = cql_setup()
    key, num = keys(1, seed=6)[0], 2
    estimate = cql.logsumexp_q(nets, learner.critic_params, learner.actor_params, batch, key, (LOW, HIGH), num)
    assert_equal_and_not_mistaken(
        estimate, cql_logsumexp(nets, learner.critic_params, learner.actor_params, batch, key, num),
        {"no importance weights": cql_logsumexp(nets, learner.critic_params, learner.actor_params, batch, key, num,
                                                False)})


def cql_one_update(hp: cql.HParams):
    """One gradient step of CQL (with --lagrange) on the hand batch from its initial state: (before, after)."""
    batch = hand_batch()
    config = cql.Config(dataset="unused.hdf5", env_id="none", total_updates=1, steps_per_update=1, batch_size=6,
                        episodes_per_eval=0, hidden_sizes=HIDDEN, num_sampled_actions=2, lagrange=True)
    trainer = cql.make_train(config, OfflineData(batch, {}, None, None))
    before = trainer.init(keys(1, seed=7)[0], hp, batch)
    after, _ = jax.jit(trainer.update)(before, hp, batch)
    return trainer, before.learner, after.learner


def test_cql_temperature_and_lagrange_multiplier_move_the_way_their_losses_say():
    """SAC's L_alpha = -log(alpha) E[log pi(a|s) + target_entropy], target -dim(A): the initial policy's entropy,
    about 1.2 per dimension here (a Monte Carlo estimate in NumPy below), is above -2, so dL/dlog(alpha) > 0 and
    Adam's first step lowers log(alpha) by exactly alpha_lr. L_alpha' = -alpha' sum_j (w gap_j - tau) (CQL eq. 5)
    with tau = 1000 far above the gap lowers log(alpha') by alpha_lr too. Catches either loss's sign flipped (the
    multiplier would rise) and a wrong learning rate."""
    hp = cql.HParams(alpha_lr=1e-3, target_action_gap=1000.0, init_alpha=1.0)
    trainer, before, after = cql_one_update(hp)
    batch = hand_batch()
    nets = cql.Networks(TanhGaussianActor(ACTION_DIM, HIDDEN), EnsembleQ(2, HIDDEN))
    mean, log_std = (f64(x)[:, None] for x in nets.actor.apply(before.actor_params, batch.observations))
    u = mean + np.exp(log_std) * np.random.default_rng(0).normal(size=(6, 1000, ACTION_DIM))
    entropy = -squashed_log_prob_of_u(u, mean, log_std).mean()
    assert entropy > -ACTION_DIM + 1.0, entropy
    np.testing.assert_allclose(after.log_alpha, float(before.log_alpha) - 1e-3, rtol=0, atol=1e-6)
    np.testing.assert_allclose(after.log_alpha_prime, float(before.log_alpha_prime) - 1e-3, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- CSVE


def csve_setup(seed: int = 0):
    """CSVE's networks, a 2-member dynamics ensemble (untrained: its predictions are only inputs) and alpha 3."""
    batch = hand_batch()
    nets = csve.Networks(GaussianActor(ACTION_DIM, LOW, HIGH, HIDDEN), StateValue(HIDDEN), EnsembleQ(2, HIDDEN),
                         (LOW, HIGH))
    actor_key, value_key, critic_key, target_key, model_key = keys(5, seed)
    model = dynamics.init_params(model_key, OBS_DIM, ACTION_DIM, dynamics.DynamicsConfig(num_members=2,
                                                                                        hidden_sizes=(8,)))
    learner = csve.Learner(nets.actor.init(actor_key, batch.observations),
                           nets.value.init(value_key, batch.observations),
                           nets.critic.init(critic_key, batch.observations, batch.actions),
                           nets.critic.init(target_key, batch.observations, batch.actions),
                           jnp.log(jnp.float32(3.0)), model, None, None, None, None)
    return batch, nets, learner


OOD_OBS = np.array([[2.0, 0.0, -1.0], [0.5, 3.0, 1.0], [-2.5, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, -3.0, 2.0],
                    [3.0, 3.0, -3.0]], np.float32)


def test_csve_value_gap_and_multiplier_loss_are_steps_1_and_2():
    """gap = E[V(s_ood)] - E[V(s')] and L_alpha = -clip(alpha, 0, 1e6) (c gap - tau_th) (step 2), with gaps on
    both sides of the threshold and a multiplier past its clip. Catches the gap taken the other way round, V(s)
    in place of V(s'), the loss's sign flipped, and a missing clip."""
    batch, nets, learner = csve_setup()
    v_ood = f64(nets.value.apply(learner.value_params, OOD_OBS))
    v_next = f64(nets.value.apply(learner.value_params, batch.next_observations))
    v_now = f64(nets.value.apply(learner.value_params, batch.observations))
    gap = csve.value_gap(nets, learner.value_params, jnp.asarray(OOD_OBS), batch.next_observations)
    assert_equal_and_not_mistaken(gap, v_ood.mean() - v_next.mean(), {
        "reversed": v_next.mean() - v_ood.mean(), "V(s)": v_ood.mean() - v_now.mean()})
    hp = csve.HParams(gap_coef=5.0, gap_threshold=10.0)
    for log_alpha, alpha in ((math.log(3.0), 3.0), (20.0, 1e6)):
        for g in (1.0, 3.0):
            loss = csve.alpha_loss(jnp.float32(log_alpha), jnp.float32(g), hp)
            assert_equal_and_not_mistaken(loss, -alpha * (5.0 * g - 10.0), {
                "sign flipped": alpha * (5.0 * g - 10.0), "no clip": -math.exp(log_alpha) * (5.0 * g - 10.0)}
                if alpha == 1e6 else {"sign flipped": alpha * (5.0 * g - 10.0)})


def test_csve_ood_states_are_the_model_s_next_states_under_the_policy_mean_clipped():
    """Step 1: s_ood = clip(P_hat_k(s, mean pi(s)), -state_clip, state_clip), state_clip 0.5 (it binds here).
    Catches the data's actions in place of the policy mean and a missing clip."""
    batch, nets, learner = csve_setup()
    key = keys(1, seed=9)[0]
    mean_action = nets.actor.apply(learner.actor_params, batch.observations).mean()
    predicted = f64(dynamics.sample_next(learner.model_params, key, batch.observations, mean_action)[0])
    with_data_actions = f64(dynamics.sample_next(learner.model_params, key, batch.observations, batch.actions)[0])
    assert (np.abs(predicted) > 0.5).any()
    states = csve.ood_states(nets, learner, batch.observations, key, csve.HParams(state_clip=0.5))
    assert_equal_and_not_mistaken(states, np.clip(predicted, -0.5, 0.5), {
        "data actions": np.clip(with_data_actions, -0.5, 0.5), "no clip": predicted})


def test_csve_value_loss_is_step_3_regression_on_policy_actions_plus_the_penalty():
    """L_V = E[(min_j Q_bar_j(s, a~) - V(s))^2] + alpha (c gap - tau_th), a~ ~ pi(.|s) clipped to the bounds
    (step 3), alpha 3, c 5, tau_th 10. Catches the penalty's sign flipped, the data's actions in place of a~,
    the online critics in place of the targets, and the max of the critics."""
    batch, nets, learner = csve_setup()
    key = keys(1, seed=10)[0]
    hp = csve.HParams(gap_coef=5.0, gap_threshold=10.0)
    action = np.clip(f64(nets.actor.apply(learner.actor_params, batch.observations).sample(seed=key)), LOW, HIGH)
    v = f64(nets.value.apply(learner.value_params, batch.observations))

    def q_of(params, actions):
        return f64(nets.critic.apply(params, batch.observations, jnp.asarray(actions, jnp.float32)))

    gap = (f64(nets.value.apply(learner.value_params, OOD_OBS)).mean()
           - f64(nets.value.apply(learner.value_params, batch.next_observations)).mean())
    penalty = 3.0 * (5.0 * gap - 10.0)
    target = q_of(learner.target_critic_params, action)
    loss, _ = csve.value_loss(nets, learner.value_params, learner, batch, jnp.asarray(OOD_OBS), key, hp)
    assert_equal_and_not_mistaken(loss, ((target.min(0) - v) ** 2).mean() + penalty, {
        "penalty's sign flipped": ((target.min(0) - v) ** 2).mean() - penalty,
        "data actions": ((q_of(learner.target_critic_params, f64(batch.actions)).min(0) - v) ** 2).mean() + penalty,
        "online critics": ((q_of(learner.critic_params, action).min(0) - v) ** 2).mean() + penalty,
        "max of critics": ((target.max(0) - v) ** 2).mean() + penalty})


def test_csve_critic_loss_is_step_4_with_v_of_the_next_state_cut_at_terminals():
    """L_Q = sum_j E[(r + gamma (1 - term) V(s') - Q_j(s, a))^2] (step 4), gamma 0.9. Catches bootstrapping from
    terminal states and not bootstrapping at time limits."""
    batch, nets, learner = csve_setup()
    r, term, timeout = f64(batch.rewards), f64(batch.terminals), f64(batch.timeouts)
    next_v = f64(nets.value.apply(learner.value_params, batch.next_observations))
    q = f64(nets.critic.apply(learner.critic_params, batch.observations, batch.actions))
    loss, _ = csve.critic_loss(nets, learner.critic_params, learner.value_params, batch, csve.HParams(gamma=0.9))
    assert_equal_and_not_mistaken(loss, squared_error_per_critic(q, bellman_target(r, term, 0.9, next_v)), {
        "ignores termination": squared_error_per_critic(q, bellman_target(r, 0 * term, 0.9, next_v)),
        "stops at time limits": squared_error_per_critic(q, bellman_target(r, np.maximum(term, timeout), 0.9,
                                                                           next_v))})


def test_csve_actor_loss_is_step_5_weighted_regression_minus_the_model_value_of_policy_actions():
    """L_pi = -b E[min(exp(beta (min_j Q_bar_j(s, a) - V(s))), w_max) log pi(a|s)] - lambda E[V(clip(P_hat(s,
    a~)))] (step 5), b 0.7, lambda 1.3, beta 2, w_max 1.5 (it binds), state_clip 0.5. Catches the exploration
    term's sign flipped (the policy would seek low-value states), b and lambda swapped, the advantage's sign
    flipped and unweighted regression."""
    batch, nets, learner = csve_setup()
    hp = csve.HParams(bc_coef=0.7, explore_coef=1.3, beta=2.0, max_weight=1.5, state_clip=0.5)
    key = keys(1, seed=11)[0]
    action_key, model_key = jax.random.split(key)
    q = f64(nets.critic.apply(learner.target_critic_params, batch.observations, batch.actions)).min(0)
    v = f64(nets.value.apply(learner.value_params, batch.observations))
    weights = np.minimum(np.exp(2.0 * (q - v)), 1.5)
    dist = nets.actor.apply(learner.actor_params, batch.observations)
    log_prob = gaussian_log_prob(f64(batch.actions), f64(dist.mean()), f64(dist.stddev()))
    action = jnp.clip(dist.sample(seed=action_key), LOW, HIGH)
    model_obs = f64(dynamics.sample_next(learner.model_params, model_key, batch.observations, action)[0])
    exploration = -f64(nets.value.apply(learner.value_params, jnp.asarray(np.clip(model_obs, -0.5, 0.5),
                                                                          jnp.float32))).mean()
    regression = -(weights * log_prob).mean()
    loss, stats = csve.actor_loss(nets, learner.actor_params, learner, learner.value_params, batch, key, hp)
    assert_equal_and_not_mistaken(loss, 0.7 * regression + 1.3 * exploration, {
        "exploration's sign flipped": 0.7 * regression - 1.3 * exploration,
        "b and lambda swapped": 1.3 * regression + 0.7 * exploration,
        "advantage V - Q": 0.7 * -(np.minimum(np.exp(2.0 * (v - q)), 1.5) * log_prob).mean() + 1.3 * exploration,
        "unweighted": 0.7 * -log_prob.mean() + 1.3 * exploration})
    np.testing.assert_allclose(stats["weight_mean"], weights.mean(), rtol=1e-5)
