"""Facts about PPO's loss (`ppo.ppo_loss`), checked against a plain-NumPy reference written from the paper.

The batch is built by hand: every sample has its own observation index, and a
table "network" returns fixed logits and values for it, so the probability ratios
r = pi(a|s) / pi_old(a|s) are chosen exactly (on both sides of the clip range, with
advantages of both signs). The reference below recomputes PPO eq. 7 and the clipped
value loss in float64 NumPy from those inputs; it never calls rlzoo code.
"""

from __future__ import annotations

from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.algorithms.ppo import Batch, HParams, ppo_loss

CLIP_EPS = 0.2
HP = HParams(clip_eps=CLIP_EPS, ent_coef=0.05, vf_coef=0.5)

# One row per sample. Ratios and (normalised) advantage signs cover the four cases of eq. 7:
#   0: r > 1+eps, A > 0 -> clipped term   1: r > 1+eps, A < 0 -> unclipped   2: r < 1-eps, A > 0 -> unclipped
#   3: r < 1-eps, A < 0 -> clipped term   4, 5: inside the range             6: r > 1+eps, A < 0   7: r < 1-eps, A > 0
RATIOS = np.array([1.5, 1.5, 0.6, 0.6, 1.1, 0.9, 1.3, 0.75])
# Mean 0.25 (so normalising subtracts something), and each sample keeps its sign once normalised.
ADVANTAGES = np.array([1.0, -2.0, 0.5, -1.5, 2.0, -0.5, -1.0, 1.5]) + 0.25
CLIPPED_TERM_CHOSEN = np.array([True, False, False, True, False, False, False, False])
ACTIONS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
NEW_VALUES = np.array([1.0, 1.0, -0.5, 0.3, 0.0, 2.0, 0.1, -1.0])
OLD_VALUES = np.array([0.0, 0.0, 0.0, 0.2, 0.0, 1.0, 0.5, -0.5])
TARGETS = np.array([1.2, 0.5, -1.0, 0.4, 0.3, 2.5, -0.2, -0.4])  # rows 0, 2, 5, 6: the clipped error is larger
LOGITS = np.random.default_rng(0).normal(size=(8, 3))


class Case(NamedTuple):
    params: dict[str, jax.Array]
    batch: Batch


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def table_policy(params: dict[str, jax.Array], obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
    """A tiny deterministic `apply_fn`: observation i (an integer) reads row i of fixed logits and values."""
    return distrax.Categorical(logits=params["logits"][obs]), params["values"][obs]


def make_case(shape: tuple[int, ...]) -> Case:
    """The hand-built batch, reshaped to `shape` ([T, B] is how `ppo_s5.py` passes whole sequences)."""
    new_log_prob = log_softmax(LOGITS)[np.arange(8), ACTIONS]
    old_log_prob = new_log_prob - np.log(RATIOS)  # so that exp(new - old) = RATIOS
    as_f32 = lambda x: jnp.asarray(np.reshape(x, shape), jnp.float32)  # noqa: E731
    batch = Batch(obs=jnp.arange(8).reshape(shape), action=jnp.asarray(ACTIONS).reshape(shape),
                  log_prob=as_f32(old_log_prob), value=as_f32(OLD_VALUES), advantage=as_f32(ADVANTAGES),
                  target=as_f32(TARGETS))
    return Case({"logits": jnp.asarray(LOGITS, jnp.float32), "values": jnp.asarray(NEW_VALUES, jnp.float32)}, batch)


def numpy_ppo_loss(case: Case, hp: HParams, clip_value: bool) -> tuple[float, dict[str, float]]:
    """PPO (Schulman et al., 2017) from its equations, in float64 over the flattened batch.

    L^CLIP = E[min(r A, clip(r, 1 - eps, 1 + eps) A)]                      (eq. 7), A normalised per minibatch
    L^VF   = 1/2 E[max((V - V_targ)^2, (V_old + clip(V - V_old, -eps, eps) - V_targ)^2)]  (or unclipped)
    loss   = -L^CLIP + c1 L^VF - c2 E[H[pi]]                                (eq. 9, as a loss to minimise)
    approx_kl = E[(r - 1) - log r] (Schulman's k3 estimator), clip_fraction = E[|r - 1| > eps].
    """
    b = jax.tree.map(lambda x: np.asarray(x, np.float64).ravel(), case.batch)
    logits = np.asarray(case.params["logits"], np.float64)[b.obs.astype(int)]
    values = np.asarray(case.params["values"], np.float64)[b.obs.astype(int)]
    log_pi = log_softmax(logits)
    log_ratio = log_pi[np.arange(len(b.action)), b.action.astype(int)] - b.log_prob
    ratio = np.exp(log_ratio)
    eps = float(hp.clip_eps)
    advantage = (b.advantage - b.advantage.mean()) / (b.advantage.std() + 1e-8)
    surrogate = np.mean([min(r * a, min(max(r, 1 - eps), 1 + eps) * a) for r, a in zip(ratio, advantage)])
    squared_error = (values - b.target) ** 2
    if clip_value:
        clipped_values = b.value + np.clip(values - b.value, -eps, eps)
        squared_error = np.maximum(squared_error, (clipped_values - b.target) ** 2)
    value_loss = 0.5 * squared_error.mean()
    entropy = -(np.exp(log_pi) * log_pi).sum(axis=-1).mean()
    total = -surrogate + float(hp.vf_coef) * value_loss - float(hp.ent_coef) * entropy
    stats = {"policy_loss": -surrogate, "value_loss": value_loss, "entropy": entropy,
             "approx_kl": np.mean((ratio - 1) - log_ratio), "clip_fraction": np.mean(np.abs(ratio - 1) > eps)}
    return total, stats


@pytest.mark.parametrize("shape", [(8,), (4, 2)], ids=["flat", "time_major_as_ppo_s5"])
@pytest.mark.parametrize("clip_value", [True, False], ids=["value_clip", "no_value_clip"])
def test_ppo_loss_equals_the_clipped_surrogate_value_loss_and_entropy_bonus_of_the_paper(shape, clip_value):
    """`ppo_loss` (total and every stat) equals PPO eq. 7 + clipped value loss - entropy bonus computed in NumPy.

    Catches: a flipped sign of the surrogate or of the entropy term; dropping the min of eq. 7 (either
    term alone); clipping with the wrong bounds; no (or per-row) advantage normalisation; dropping the
    value clipping (or clipping when it is off); a wrong approx_kl or clip_fraction. The [T, B] shape is
    how ppo_s5.py calls it: normalisation must run over the whole minibatch, not per time step.
    """
    case = make_case(shape)
    total, stats = jax.jit(ppo_loss, static_argnums=(0, 4))(table_policy, case.params, case.batch, HP, clip_value)
    expected_total, expected_stats = numpy_ppo_loss(case, HP, clip_value)
    np.testing.assert_allclose(total, expected_total, rtol=2e-5, atol=1e-6)
    assert set(stats) == set(expected_stats)
    for name, value in expected_stats.items():
        np.testing.assert_allclose(stats[name], value, rtol=2e-5, atol=1e-6, err_msg=name)


def test_the_hand_built_batch_exercises_every_branch_the_reference_distinguishes():
    """The batch is not degenerate: value clipping changes the loss, and the min of eq. 7 picks each term.

    Catches a fixture that would let `test_ppo_loss_equals_...` pass with value clipping, the min, or the
    entropy term broken (for example ratios all inside the clip range).
    """
    case = make_case((8,))
    with_clip, stats = numpy_ppo_loss(case, HP, clip_value=True)
    without_clip, _ = numpy_ppo_loss(case, HP, clip_value=False)
    assert with_clip - without_clip > 0.05
    assert float(HP.ent_coef) * stats["entropy"] > 0.01  # flipping the entropy sign moves the total by > 0.02
    normalised = (ADVANTAGES - ADVANTAGES.mean()) / ADVANTAGES.std()
    assert (np.sign(normalised) == np.sign(ADVANTAGES - 0.25)).all()
    clipped = np.clip(RATIOS, 1 - CLIP_EPS, 1 + CLIP_EPS)
    np.testing.assert_array_equal(clipped * normalised < RATIOS * normalised, CLIPPED_TERM_CHOSEN)
    assert stats["clip_fraction"] == 0.75


def test_samples_whose_ratio_moved_past_the_clip_in_the_advantage_direction_get_no_policy_gradient():
    """The point of eq. 7: where min() picks the clipped term (r > 1+eps with A > 0, r < 1-eps with A < 0),
    the policy gets no gradient from that sample; everywhere else it does.

    Catches: using the unclipped objective (gradient on rows 0 and 3), using the clipped term alone
    (no gradient on rows 1, 2, 6, 7), or clipping the advantage instead of the ratio.
    """
    case = make_case((8,))
    hp = HP.replace(ent_coef=0.0, vf_coef=0.0)
    grads = jax.grad(lambda p: ppo_loss(table_policy, p, case.batch, hp, True)[0])(case.params)
    row_norms = np.abs(np.asarray(grads["logits"])).sum(axis=-1)
    np.testing.assert_array_equal(row_norms[CLIPPED_TERM_CHOSEN], 0.0)
    assert (row_norms[~CLIPPED_TERM_CHOSEN] > 1e-4).all(), row_norms
