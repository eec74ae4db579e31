"""The losses of ZP and SPR equal plain-NumPy references written here from the papers' equations.

Each reference takes the real network's outputs (encode, transition, project, predict, Q-values or
C51 logits) and does all the loss arithmetic itself in NumPy, on hand-built replay sequences whose
episodes end, by termination or truncation, inside the sequence. The batches are built so that each
classic mistake changes the number: a flipped sign, a mask that ignores the episode end, a bootstrap
that ignores termination (or treats truncation as termination), a target from the wrong network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo import replay
from rlzoo.algorithms import dqn, spr, zp

GAMMA = 0.9


# ----------------------------------------------------------------------------- plain-NumPy references


def episode_mask(terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
    """m[b, k] = 1 while no step before k of sequence b has ended its episode (the end step itself counts)."""
    done = (terminated | truncated).astype(int)
    ended_before = np.cumsum(done, axis=1) - done
    return ended_before == 0


def squared_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """||x - y||^2 over the last axis."""
    return np.sum(np.square(x - y), axis=-1)


def zp_reference(predicted: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """L_ZP = sum_{b,k} m_bk ||g(z_hat_{t+k}, a_{t+k}) - target(s_{t+k+1})||^2 / sum m (Ni et al., eq. 6; a mean
    over the unmasked k, as zp.py's docstring states)."""
    return float(np.sum(mask * squared_error(predicted, targets)) / np.sum(mask))


def dqn_reference(q: np.ndarray, next_q_target: np.ndarray, action: np.ndarray, reward: np.ndarray,
                  terminated: np.ndarray, gamma: float) -> tuple[float, float]:
    """mean_b 0.5 (Q(s, a) - y)^2 with y = r + gamma (1 - term) max_a' Q_bar(s', a') (Mnih et al., 2015)."""
    y = reward + gamma * (1.0 - terminated) * next_q_target.max(axis=-1)
    taken = q[np.arange(len(action)), action]
    return float(np.mean(0.5 * np.square(taken - y))), float(np.mean(taken))


def cosine_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """2 - 2 x.y / (|x| |y|) over the last axis (SPR, Schwarzer et al., eq. 4)."""
    cos = np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    return 2.0 - 2.0 * cos


def spr_reference(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """L_SPR = mean_b (1/K) sum_k m_bk (2 - 2 cos(y_bk, t_bk)) (SPR eq. 4, masked after the episode's end)."""
    return float(np.mean(mask * cosine_reference(predictions, targets)))


def n_step_reference(reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, n: int,
                     gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence: m (steps summed, stopping after the first done step or at n), R = sum_{k<m} gamma^k r_k and
    the bootstrap discount gamma^m (1 - term_{m-1}) (Sutton & Barto, eq. 7.1), written as a loop."""
    steps, returns, discounts = [], [], []
    for r, term, trunc in zip(reward, terminated, truncated):
        total, m = 0.0, 0
        while m < n:
            total += gamma ** m * r[m]
            m += 1
            if term[m - 1] or trunc[m - 1]:
                break
        steps.append(m)
        returns.append(total)
        discounts.append(0.0 if term[m - 1] else gamma ** m)
    return np.array(steps), np.array(returns), np.array(discounts)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def c51_projection_reference(values: np.ndarray, probs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Bellemare et al. (2017), Algorithm 1: each clipped Tz_j shares p_j between its two neighbouring atoms."""
    v_min, v_max, dz = support[0], support[-1], support[1] - support[0]
    target = np.zeros_like(probs)
    for b in range(values.shape[0]):
        for tz, p in zip(values[b], probs[b]):
            pos = (np.clip(tz, v_min, v_max) - v_min) / dz
            low, high = int(np.floor(pos)), int(np.ceil(pos))
            if low == high:
                target[b, low] += p
            else:
                target[b, low] += p * (high - pos)
                target[b, high] += p * (pos - low)
    return target


def c51_reference(logits: np.ndarray, next_target_logits: np.ndarray, action: np.ndarray, returns: np.ndarray,
                  discount: np.ndarray, support: np.ndarray) -> float:
    """mean_b -sum_i Phi(R + discount z)_i log p_i(s, a), Phi the projection of the target's greedy action's
    distribution (Bellemare et al., 2017, eq. 7 with the n-step return of SPR/Rainbow)."""
    next_probs = softmax(next_target_logits)  # [B, A, N]
    greedy = np.argmax(np.sum(next_probs * support, -1), axis=-1)
    p_next = next_probs[np.arange(len(greedy)), greedy]
    target = c51_projection_reference(returns[:, None] + discount[:, None] * support[None, :], p_next, support)
    taken = logits[np.arange(len(action)), action]
    log_p = taken - taken.max(-1, keepdims=True) - np.log(np.sum(np.exp(taken - taken.max(-1, keepdims=True)), -1,
                                                                   keepdims=True))
    return float(np.mean(-np.sum(target * log_p, axis=-1)))


# ----------------------------------------------------------------------------- hand-built sequences

# Five sequences of four steps: no end; terminated at step 1; truncated at step 0; terminated at step 2;
# terminated at step 3 (after the n = 3 window, so it must not matter to the 3-step return).
TERMINATED = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
TRUNCATED = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)


def hand_built_sequences(obs: jax.Array, next_obs: jax.Array, num_actions: int, key: jax.Array
                         ) -> replay.SequenceSample:
    """A SequenceSample of the episode ends above, random actions and rewards, and the mask of `episode_mask`."""
    batch, length = TERMINATED.shape
    action_key, reward_key = jax.random.split(key)
    steps = replay.Transition(obs, jax.random.randint(action_key, (batch, length), 0, num_actions),
                              jax.random.uniform(reward_key, (batch, length), minval=0.5, maxval=2.0),
                              jnp.asarray(TERMINATED), jnp.asarray(TRUNCATED), next_obs)
    indices = replay.SlotIndex(jnp.zeros(batch, jnp.int32), jnp.arange(batch, dtype=jnp.int32))
    return replay.SequenceSample(indices, steps, jnp.asarray(episode_mask(TERMINATED, TRUNCATED)))


def test_the_hand_built_mask_is_the_one_the_replay_buffer_gives():
    """The batches below use `episode_mask`; a buffer holding the same episode ends must give the same mask
    (catches a test whose mask disagrees with what `replay.sample_sequences` feeds the losses)."""
    batch, length = TERMINATED.shape
    example = replay.Transition(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros((), bool),
                                jnp.zeros((), bool), jnp.zeros(()))
    buffer = replay.init(example, length, batch)  # one env per sequence, `length` rows: one sequence per env
    for t in range(length):
        buffer = replay.add(buffer, replay.Transition(jnp.zeros(batch), jnp.zeros(batch, jnp.int32),
                                                      jnp.zeros(batch), jnp.asarray(TERMINATED[:, t]),
                                                      jnp.asarray(TRUNCATED[:, t]), jnp.zeros(batch)))
    sequence = replay.sample_sequences(buffer, jax.random.PRNGKey(0), 64, length)
    np.testing.assert_array_equal(sequence.indices.rows, 0)
    expected = episode_mask(TERMINATED, TRUNCATED)
    np.testing.assert_array_equal(np.asarray(sequence.mask), expected[np.asarray(sequence.indices.envs)])


# ----------------------------------------------------------------------------- ZP


@pytest.fixture(scope="module")
def zp_setup():
    """A small ZP network (obs 6, latent 8, 2 actions), online and EMA parameters, and a K = 4 batch."""
    network = zp.ZPNetwork(num_actions=2, latent_dim=8, hidden_sizes=(16,))
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    obs = jax.random.normal(keys[0], (5, 4, 6))
    next_obs = jax.random.normal(keys[1], (5, 4, 6))
    params = network.init(keys[2], obs[:, 0], jnp.zeros(5, jnp.int32))
    target_params = network.init(keys[3], obs[:, 0], jnp.zeros(5, jnp.int32))
    sequence = hand_built_sequences(obs, next_obs, 2, keys[4])
    return network, params, target_params, sequence


@pytest.mark.parametrize("target", zp.TARGETS)
def test_zp_loss_equals_the_masked_mean_squared_latent_prediction_error(zp_setup, target):
    """L_ZP with K = 4 against `zp_reference`: the latent model rolled from phi(s_t) with a_t..a_{t+3}, the
    targets phi(s'_{t+k}) of the online (online/detached) or EMA (ema) encoder, steps after the end unweighted.
    Catches: a flipped sign, a mask ignoring the end, targets of the wrong encoder or shifted by a step, a
    latent model fed the wrong action, a sum over k instead of a mean."""
    network, params, target_params, sequence = zp_setup
    steps = sequence.transitions
    config = zp.Config(zp_steps=4, zp_target=target)
    loss, first_latent = jax.jit(lambda p, t: zp.zp_loss(config, network, p, t, sequence))(params, target_params)

    encode = lambda p, x: np.asarray(network.apply(p, x, method=zp.ZPNetwork.encode))  # noqa: E731
    latent = encode(params, steps.obs[:, 0])
    np.testing.assert_allclose(first_latent, latent, rtol=1e-5, atol=1e-6)
    predicted = []
    for k in range(4):
        latent = np.asarray(network.apply(params, latent, steps.action[:, k], method=zp.ZPNetwork.transition))
        predicted.append(latent)
    targets = encode(target_params if target == "ema" else params, steps.next_obs)
    mask = np.asarray(sequence.mask, np.float64)
    expected = zp_reference(np.stack(predicted, 1), targets, mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    unmasked = zp_reference(np.stack(predicted, 1), targets, np.ones_like(mask))
    assert abs(unmasked - expected) > 1e-2 * expected  # the batch is one in which ignoring the mask shows


def test_zp_rl_loss_is_the_dqn_loss_on_the_latent_bootstrapping_through_truncation(zp_setup):
    """rl_loss against `dqn_reference` on the first steps (one terminated, one truncated): Q from the online
    encoder and head, y from the EMA ones, no bootstrap after termination but one after truncation.
    Catches: a flipped sign, a discount ignoring termination, truncation treated as termination, y from the
    online network, max replaced by the taken action."""
    network, params, target_params, sequence = zp_setup
    first = jax.tree.map(lambda x: x[:, 1], sequence.transitions)  # step 1: row 1 terminates, row 2 ...
    first = first._replace(terminated=jnp.array([0, 1, 0, 0, 0], bool), truncated=jnp.array([0, 0, 1, 0, 0], bool))
    hp = zp.HParams(gamma=GAMMA)
    loss, q_mean = jax.jit(lambda p, t: zp.rl_loss(network, p, t, first, hp))(params, target_params)

    q_of = lambda p, obs: np.asarray(network.apply(  # noqa: E731
        p, network.apply(p, obs, method=zp.ZPNetwork.encode), method=zp.ZPNetwork.q_values), np.float64)
    q, next_q = q_of(params, first.obs), q_of(target_params, first.next_obs)
    args = (np.asarray(first.action), np.asarray(first.reward, np.float64))
    expected, expected_q_mean = dqn_reference(q, next_q, *args, np.asarray(first.terminated, np.float64), GAMMA)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(q_mean, expected_q_mean, rtol=1e-5, atol=1e-6)
    # The batch distinguishes the mistakes: ignoring termination, or terminating on truncation, changes the loss.
    ignoring = dqn_reference(q, next_q, *args, np.zeros(5), GAMMA)[0]
    truncating = dqn_reference(q, next_q, *args, np.array([0, 1, 1, 0, 0.0]), GAMMA)[0]
    assert min(abs(ignoring - expected), abs(truncating - expected)) > 1e-3 * expected


# ----------------------------------------------------------------------------- SPR

SPR_CONFIG = spr.Config(k_steps=3, n_step=3, augmentation="none", transition_channels=4)


@pytest.fixture(scope="module")
def spr_setup():
    """A small SPR network (3 actions, 51 atoms on [0, 20]), online, target and C51-target parameters, and a
    batch of 10x10x4 binary frames whose next frames are fresh (not the next step's obs)."""
    network = spr.SPRNetwork(num_actions=3, num_atoms=SPR_CONFIG.num_atoms, transition_channels=4)
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    obs = (jax.random.uniform(keys[0], (5, 4, 10, 10, 4)) < 0.2).astype(jnp.float32)
    next_obs = (jax.random.uniform(keys[1], (5, 4, 10, 10, 4)) < 0.2).astype(jnp.float32)
    init = lambda key: network.init(key, obs[:, 0], jnp.zeros(5, jnp.int32),  # noqa: E731
                                    method=spr.SPRNetwork.initialize)
    params, target_params, c51_target_params = init(keys[2]), init(keys[3]), init(keys[4])
    return network, params, target_params, c51_target_params, hand_built_sequences(obs, next_obs, 3, keys[5])


def test_spr_loss_equals_the_masked_cosine_prediction_error_over_k_steps(spr_setup):
    """spr_loss (K = 3, no augmentation) against `spr_reference`: predictions q(g(h^k(f(s_t)))) of the online
    network, targets g_bar(f_bar(s_{t+k})) of the target network, (1/K) sum over k then mean over b, steps
    after the episode end weighted 0.
    Catches: a flipped sign, a mask ignoring the end, targets from the online network or the wrong step, the
    predictor skipped, a mean over the unmasked steps only."""
    network, params, target_params, _, sequence = spr_setup
    steps = sequence.transitions
    loss = jax.jit(lambda p, t: spr.spr_loss(SPR_CONFIG, network, p, t, sequence, steps.obs[:, 0],
                                             jax.random.PRNGKey(0)))(params, target_params)

    apply = lambda p, x, method: network.apply(p, x, method=method)  # noqa: E731
    latent, predictions = apply(params, steps.obs[:, 0], spr.SPRNetwork.encode), []
    for k in range(3):
        latent = network.apply(params, latent, steps.action[:, k], method=spr.SPRNetwork.transition)
        predictions.append(apply(params, apply(params, latent, spr.SPRNetwork.project), spr.SPRNetwork.predict))
    targets = apply(target_params, apply(target_params, steps.next_obs[:, :3], spr.SPRNetwork.encode),
                    spr.SPRNetwork.project)
    predictions, targets = np.stack(predictions, 1).astype(np.float64), np.asarray(targets, np.float64)
    mask = np.asarray(sequence.mask[:, :3], np.float64)
    expected = spr_reference(predictions, targets, mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert abs(spr_reference(predictions, targets, np.ones_like(mask)) - expected) > 1e-2 * expected


def test_the_n_step_sample_read_off_a_sequence_matches_the_loop_definition(spr_setup):
    """n_step_from_sequence (n = 3) against `n_step_reference`: the return stops after the first done step,
    the discount is gamma^m, 0 after termination, and s' is next_obs of step m - 1.
    Catches: a discount ignoring termination, truncation treated as termination, rewards summed past the
    end, bootstrapping from the wrong step's next_obs."""
    *_, sequence = spr_setup
    sample = spr.n_step_from_sequence(sequence, 3, GAMMA)
    reward = np.asarray(sequence.transitions.reward, np.float64)
    steps, returns, discount = n_step_reference(reward, TERMINATED, TRUNCATED, 3, GAMMA)
    np.testing.assert_array_equal(steps, [3, 2, 1, 3, 3])
    np.testing.assert_allclose(sample.returns, returns, rtol=1e-6)
    np.testing.assert_allclose(sample.discount, discount, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sample.discount)[[1, 3]], 0.0)  # terminated inside the window
    next_obs = np.asarray(sequence.transitions.next_obs)[np.arange(5), steps - 1]
    np.testing.assert_array_equal(sample.last.next_obs, next_obs)
    np.testing.assert_array_equal(sample.first.obs, sequence.transitions.obs[:, 0])


def test_spr_c51_td_loss_on_the_sequence_equals_the_projected_n_step_cross_entropy(spr_setup):
    """dqn.td_loss on n_step_from_sequence (SPR's C51 term, n = 3, gamma 0.9) against `c51_reference`, with the
    n-step returns and discounts of `n_step_reference` and the C51 target network's greedy next distribution.
    Catches: a flipped sign, a discount ignoring termination or truncation treated as termination, the
    bootstrap from the online network, a projection that loses mass at the support's ends."""
    network, params, _, c51_target_params, sequence = spr_setup
    hp = spr.HParams(gamma=GAMMA)
    loss, _ = jax.jit(lambda p, t: dqn.td_loss(SPR_CONFIG, network, p, t,
                                               spr.n_step_from_sequence(sequence, 3, hp.gamma), hp))(
        params, c51_target_params)

    steps = sequence.transitions
    m, returns, discount = n_step_reference(np.asarray(steps.reward, np.float64), TERMINATED, TRUNCATED, 3, GAMMA)
    logits = np.asarray(network.apply(params, steps.obs[:, 0]), np.float64)
    next_logits = np.asarray(network.apply(c51_target_params, steps.next_obs[np.arange(5), m - 1]), np.float64)
    support = np.linspace(SPR_CONFIG.v_min, SPR_CONFIG.v_max, SPR_CONFIG.num_atoms)
    reference = lambda d: c51_reference(logits, next_logits, np.asarray(steps.action[:, 0]), returns, d,  # noqa: E731
                                        support)
    expected = reference(discount)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    ignoring_termination = GAMMA ** m.astype(np.float64)
    truncation_terminates = np.where(TRUNCATED[np.arange(5), m - 1], 0.0, discount)
    for mistaken in (ignoring_termination, truncation_terminates):
        assert abs(reference(mistaken) - expected) > 1e-3 * expected
