"""Facts about DQN's targets and losses, checked against plain-NumPy references written from the papers.

Each test builds a hand-made n-step replay sample (rows that terminate have
discount 0, the others gamma^m; first-step rewards, n-step returns and the two
next observations all differ, so reading the wrong field changes the number), gets
Q-values or logits from the real `QNetwork` with `network.apply`, and recomputes
the target and the loss in float64 NumPy. Only the network's outputs come from
rlzoo; no rlzoo helper computes an expected value.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import replay
from rlzoo.algorithms import dqn
from rlzoo.networks import QNetwork
from rlzoo.updates import is_due, polyak
from rlzoo.value_based import epsilon

OBS_DIM, NUM_ACTIONS, BATCH = 3, 3, 6
GAMMA = 0.9
# A 2-step sample: rows 1 and 4 terminate inside the window (discount 0), row 2 ends on a truncation (its n-step
# return stops early, m = 1, but it still bootstraps), the rest are full 2-step windows.
DISCOUNTS = np.array([GAMMA ** 2, 0.0, GAMMA, GAMMA ** 2, 0.0, GAMMA ** 2])
RETURNS = np.array([1.0, 0.5, -0.3, 2.5, 0.0, 1.5])
WEIGHTS = np.array([1.0, 0.5, 2.0, 1.0, 0.25, 1.5])  # prioritised-replay importance weights
ACTIONS = np.array([0, 1, 2, 2, 1, 0])
V_MIN, V_MAX, NUM_ATOMS = -2.0, 3.0, 11  # rows 3 and 5 have targets beyond V_MAX: the projections must clip


def make_sample() -> replay.NStepSample:
    """A hand-made `NStepSample`: the first transition's obs/action, the last one's next_obs, returns, discounts."""
    rng = np.random.default_rng(1)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    first = replay.Transition(obs=normal(BATCH, OBS_DIM), action=jnp.asarray(ACTIONS), reward=normal(BATCH),
                              terminated=jnp.zeros(BATCH, bool), truncated=jnp.zeros(BATCH, bool),
                              next_obs=normal(BATCH, OBS_DIM))
    last = first._replace(obs=first.next_obs, terminated=jnp.asarray(DISCOUNTS == 0.0),
                          next_obs=normal(BATCH, OBS_DIM))
    index = replay.SlotIndex(jnp.arange(BATCH), jnp.zeros(BATCH, jnp.int32))
    return replay.NStepSample(index, first, last, jnp.asarray(RETURNS, jnp.float32),
                              jnp.asarray(DISCOUNTS, jnp.float32), jnp.asarray(WEIGHTS, jnp.float32))


def make_config(loss: str, double: bool, dueling: bool = False) -> dqn.Config:
    return dqn.Config(loss=loss, double=double, dueling=dueling, num_atoms=NUM_ATOMS, v_min=V_MIN, v_max=V_MAX,
                      hidden_sizes=(16,))


def make_network(config: dqn.Config) -> QNetwork:
    atoms = config.num_atoms if config.distributional else 1
    return QNetwork((OBS_DIM,), NUM_ACTIONS, atoms, config.dueling, config.hidden_sizes, config.activation)


def network_outputs(network: QNetwork, sample: replay.NStepSample) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Online and target params (different seeds) and, in float64, the outputs the reference needs.

    The initial weights are scaled by 3 so that actions differ clearly in value (a freshly initialised
    distributional head is close to uniform, which would hide which action a* is).
    """
    params, target_params = (jax.tree.map(lambda x: 3.0 * x, network.init(jax.random.PRNGKey(seed), sample.first.obs))
                             for seed in (0, 1))
    outputs = {"online": network.apply(params, sample.first.obs),
               "online_next": network.apply(params, sample.last.next_obs),
               "target_next": network.apply(target_params, sample.last.next_obs)}
    return params, target_params, {name: np.asarray(x, np.float64) for name, x in outputs.items()}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def c51_projection(target_values: np.ndarray, probs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Bellemare et al. (2017), Algorithm 1, as a loop: each clipped Tz_j splits p_j between atoms l and u."""
    delta = support[1] - support[0]
    projected = np.zeros(len(support))
    for value, p in zip(target_values, probs):
        b = (min(max(value, support[0]), support[-1]) - support[0]) / delta
        lower, upper = math.floor(b), math.ceil(b)
        if lower == upper:  # Tz_j falls on an atom
            projected[lower] += p
        else:
            projected[lower] += p * (upper - b)
            projected[upper] += p * (b - lower)
    return projected


def two_hot(y: float, points: np.ndarray) -> np.ndarray:
    """y clipped to the points' range, as mass on its two neighbours in proportion to closeness (MuZero app. F)."""
    y = min(max(y, points[0]), points[-1])
    probs = np.zeros(len(points))
    upper = min(int(np.searchsorted(points, y, side="right")), len(points) - 1)
    lower = upper - 1
    probs[upper] = (y - points[lower]) / (points[upper] - points[lower])
    probs[lower] = 1.0 - probs[upper]
    return probs


def hl_gauss(y: float, v_min: float, v_max: float, num_bins: int, sigma_ratio: float = 0.75) -> np.ndarray:
    """Farebrother et al. (2024) eq. 3.1: bin masses of N(y, sigma^2) on [v_min, v_max], sigma = 0.75 bin widths."""
    y = min(max(y, v_min), v_max)
    edges = np.linspace(v_min, v_max, num_bins + 1)
    sigma = sigma_ratio * (v_max - v_min) / num_bins
    cdf = np.array([0.5 * (1.0 + math.erf((e - y) / (math.sqrt(2.0) * sigma))) for e in edges])
    return np.diff(cdf) / (cdf[-1] - cdf[0])


def huber(x: np.ndarray, delta: float = 1.0) -> np.ndarray:
    return np.where(np.abs(x) <= delta, 0.5 * x ** 2, delta * (np.abs(x) - 0.5 * delta))


def numpy_td_loss(config: dqn.Config, out: dict[str, np.ndarray],
                  discounts: np.ndarray = DISCOUNTS) -> tuple[float, float]:
    """(weighted mean loss, mean Q of the taken actions), from Mnih et al. (2015) and the papers of each loss.

    y = R^(n) + gamma^m (1 - term) Q_bar(s', a*),  a* = argmax_a Q_bar(s', a), or argmax_a Q(s', a) with Double
    DQN (van Hasselt et al., 2016). Distributional heads are read out as sum_i softmax(logits)_i z_i, on the
    C51 support linspace(v_min, v_max, K) or on the K bin centres of [v_min, v_max] (HL-Gauss, two-hot).
    """
    rows = np.arange(BATCH)
    if config.loss == "c51":
        points = np.linspace(V_MIN, V_MAX, NUM_ATOMS)
    else:
        width = (V_MAX - V_MIN) / NUM_ATOMS
        points = V_MIN + width * (np.arange(NUM_ATOMS) + 0.5)
    to_q = (lambda o: softmax(o) @ points) if config.distributional else (lambda o: o)
    next_action = np.argmax(to_q(out["online_next" if config.double else "target_next"]), axis=-1)
    taken = out["online"][rows, ACTIONS]
    next_taken = out["target_next"][rows, next_action]
    if config.loss == "c51":  # Bellemare et al. (2017), Algorithm 1
        targets = [c51_projection(RETURNS[i] + discounts[i] * points, softmax(next_taken[i]), points)
                   for i in rows]
        losses = -np.sum(np.array(targets) * log_softmax(taken), axis=-1)
    else:
        y = RETURNS + discounts * to_q(next_taken)
        if config.loss == "mse":
            losses = 0.5 * (taken - y) ** 2
        elif config.loss == "huber":
            losses = huber(taken - y)
        else:
            encode = ((lambda v: hl_gauss(v, V_MIN, V_MAX, NUM_ATOMS)) if config.loss == "hl_gauss"
                      else (lambda v: two_hot(v, points)))
            losses = -np.sum(np.array([encode(v) for v in y]) * log_softmax(taken), axis=-1)
    return float(np.mean(WEIGHTS * losses)), float(np.mean(to_q(taken)))


@pytest.mark.parametrize("double", [False, True], ids=["dqn", "double"])
@pytest.mark.parametrize("loss", dqn.LOSSES)
def test_td_loss_equals_the_papers_target_and_loss_for_every_loss_variant(loss, double):
    """`dqn.td_loss` equals the NumPy target and loss for MSE, Huber, C51, HL-Gauss and two-hot, Double on or off.

    Catches: bootstrapping a terminated row (ignoring `discount`) or using gamma instead of gamma^m; reading
    first-step rewards instead of n-step returns, or the first transition's next_obs; choosing a* with the
    wrong network for (non-)Double DQN; the max instead of the chosen action's target value; a C51 projection
    that does not clip or splits mass the wrong way; the wrong HL-Gauss sigma or two-hot weights; dropping
    the importance weights.
    """
    config = make_config(loss, double)
    network, sample = make_network(config), make_sample()
    params, target_params, out = network_outputs(network, sample)
    loss_value, q_mean = jax.jit(lambda p, t: dqn.td_loss(config, network, p, t, sample, dqn.HParams()))(
        params, target_params)
    expected_loss, expected_q = numpy_td_loss(config, out)
    np.testing.assert_allclose(loss_value, expected_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q_mean, expected_q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "c51"])
def test_the_sample_makes_double_dqn_termination_and_clipping_matter(loss):
    """The hand-made sample is not degenerate, so the test above can tell the mistakes apart.

    Catches a fixture under which Double and plain DQN choose the same next actions, bootstrapping the
    terminated rows would not change the loss (the reference is evaluated both ways), or no target
    leaves the support (so that a projection without clipping would go unnoticed).
    """
    config = make_config(loss, double=False)
    _, _, out = network_outputs(make_network(config), make_sample())
    to_q = (lambda o: softmax(o) @ np.linspace(V_MIN, V_MAX, NUM_ATOMS)) if loss == "c51" else (lambda o: o)
    online_choice = np.argmax(to_q(out["online_next"]), axis=-1)
    target_choice = np.argmax(to_q(out["target_next"]), axis=-1)
    assert ((online_choice != target_choice) & (DISCOUNTS > 0)).any()
    assert numpy_td_loss(config, out)[0] != pytest.approx(numpy_td_loss(make_config(loss, True), out)[0], rel=1e-3)
    # Bootstrapping the terminated rows (discount gamma^2 instead of 0) moves the reference by more than 1e-3.
    ignoring_termination = numpy_td_loss(config, out, np.where(DISCOUNTS == 0.0, GAMMA ** 2, DISCOUNTS))[0]
    assert abs(ignoring_termination - numpy_td_loss(config, out)[0]) > 1e-3
    assert (RETURNS + DISCOUNTS * V_MAX > V_MAX).any()  # some C51 atoms Tz_j land beyond v_max


def dense(params: dict[str, Any], x: np.ndarray) -> np.ndarray:
    return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


@pytest.mark.parametrize("num_atoms", [1, 5], ids=["scalar", "distributional"])
def test_dueling_head_is_value_plus_advantage_minus_its_mean_over_actions(num_atoms):
    """QNetwork(dueling=True) outputs V + A - mean_a A (Wang et al., 2016, eq. 9), recomputed in NumPy from
    its own torso and two head layers; for logits the mean runs over actions, per atom (Rainbow).

    Catches: subtracting the max instead of the mean, averaging over atoms instead of actions, omitting the
    mean, or swapping the value and advantage streams.
    """
    network = QNetwork((OBS_DIM,), NUM_ACTIONS, num_atoms, dueling=True, hidden_sizes=(16,))
    obs = np.random.default_rng(2).normal(size=(BATCH, OBS_DIM))
    params = network.init(jax.random.PRNGKey(3), jnp.asarray(obs, jnp.float32))["params"]
    features = np.maximum(dense(params["MLP_0"]["Dense_0"], obs), 0.0)  # relu torso
    advantage = dense(params["Dense_0"], features)  # [B, A * atoms]
    value = dense(params["Dense_1"], features)  # [B, atoms]
    if num_atoms > 1:
        advantage = advantage.reshape(BATCH, NUM_ACTIONS, num_atoms)
        value = value.reshape(BATCH, 1, num_atoms)
    expected = value + advantage - advantage.mean(axis=1, keepdims=True)
    q = np.asarray(network.apply({"params": params}, jnp.asarray(obs, jnp.float32)))
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-5)
    # The aggregation is identifiable: the mean over actions of Q is V (eq. 9's reason for the mean).
    np.testing.assert_allclose(q.mean(axis=1, keepdims=True), value, rtol=1e-5, atol=1e-5)


def test_epsilon_decays_linearly_then_stays_at_its_final_value():
    """epsilon(t) = 1.0 -> 0.1 linearly over the first half of 200 updates, then 0.1 (values worked by hand).

    Catches: decaying over all updates instead of exploration_fraction of them, decaying the wrong way,
    or not holding eps_end afterwards.
    """
    hp = dqn.HParams(eps_start=1.0, eps_end=0.1, exploration_fraction=0.5)
    steps = jnp.array([0, 25, 50, 99, 100, 150, 199])
    expected = [1.0, 0.775, 0.55, 0.109, 0.1, 0.1, 0.1]  # 1 - 0.9 t / 100 until t = 100
    np.testing.assert_allclose(epsilon(hp, steps, 200), expected, rtol=1e-6)


def test_polyak_averaging_moves_the_target_a_fraction_tau_towards_the_online_network():
    """theta_bar <- (1 - tau) theta_bar + tau theta (Lillicrap et al., 2016) on every leaf; tau = 1 copies.

    Catches: swapping the roles of tau and 1 - tau, or of target and online.
    """
    target = {"w": jnp.array([[1.0, -2.0], [0.5, 4.0]]), "b": jnp.array([3.0])}
    online = {"w": jnp.array([[0.0, 2.0], [1.5, -4.0]]), "b": jnp.array([-1.0])}
    averaged = polyak(target, online, 0.25)
    np.testing.assert_allclose(averaged["w"], [[0.75, -1.0], [0.75, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(averaged["b"], [2.0], rtol=1e-6)
    copied = polyak(target, online, 1.0)
    np.testing.assert_array_equal(copied["w"], online["w"])


def test_a_periodic_update_is_due_every_period_steps_and_a_float_period_is_truncated():
    """is_due(step, D) holds at step = 0, D, 2D, ... only; the traced float period 2.7 acts as 2."""
    steps = jnp.arange(13)
    np.testing.assert_array_equal(is_due(steps, 4.0), [s % 4 == 0 for s in range(13)])
    np.testing.assert_array_equal(is_due(steps, jnp.float32(2.7)), [s % 2 == 0 for s in range(13)])


def test_dqn_refreshes_its_target_network_only_every_target_period_updates_once_learning():
    """A tiny DQN run, one update at a time: before learning_starts the target never moves; afterwards it is
    the Polyak average (1 - tau) target + tau online exactly on updates whose count is a multiple of
    target_period, and unchanged on the others.

    Catches: refreshing every update, off by one in the period, refreshing before learning starts, or
    copying instead of averaging when tau < 1.
    """
    config = dqn.Config(total_timesteps=4 * 12, num_envs=4, buffer_size=48, batch_size=8, learning_starts=16,
                        hidden_sizes=(8,))
    hp = dqn.HParams(target_period=3.0, tau=0.5, lr=1e-2)
    trainer = dqn.make_train(config)
    step = jax.jit(lambda s: trainer.run(s, hp, 1)[0])
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0), hp)
    refreshed = []
    for _ in range(config.num_updates):
        new = step(state)
        moved = not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.target_params),
                                                              jax.tree.leaves(new.target_params)))
        if moved:
            expected = jax.tree.map(lambda t, o: 0.5 * np.asarray(t) + 0.5 * np.asarray(o), state.target_params,
                                    new.params)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new.target_params,
                         expected)
        refreshed.append(moved)
        state = new
    # learning starts at update 16 // 4 = 4; counts 6, 9, 12 are due (the count after update i is i + 1)
    assert refreshed == [count >= 5 and count % 3 == 0 for count in range(1, 13)]
