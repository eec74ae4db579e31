"""SPR, self-predictive representations (Schwarzer et al., ICLR 2021, arXiv 2007.05929), on MinAtar.

    python algorithms/spr.py                                   # Breakout-MinAtar, 100k env steps
    python algorithms/spr.py --env-id Asterix-MinAtar --target online     # the paper's augmented setting
    python algorithms/spr.py --augmentation none --k-steps 3 --loss hl_gauss

C51 (or HL-Gauss) Q-learning (dqn.py's loss and target network, n-step returns
read off the same replay sequence, on augmented observations) plus an auxiliary
loss that makes the representation predict its own future. From one replay
sequence s_t..s_{t+K} with actions a_t..a_{t+K-1} (`replay.sample_sequences`):

    z_0 = f(aug(s_t))                               online encoder: the MinAtar conv, feature map
    z_k = h(z_{k-1}, a_{t+k-1}),  k = 1..K         transition model: two 3x3 convs (ReLU) on [z, one-hot(a)
                                                    broadcast as channels]
    y_k = q(g(z_k))                                 projection g, then predictor q
    t_k = g_bar(f_bar(aug(s_{t+k})))                target encoder and projection (EMA copies)
    L_SPR = mean_b (1/K) sum_k m_k (2 - 2 cos(y_k, t_k))       (paper eq. 4, as a normalised L2)

m_k is 0 once the episode has ended before s_{t+k} (the replay's sequence mask),
so a prediction never has a target from another episode. The total loss is
L_C51 + lambda L_SPR with lambda = `spr_weight` (5 in the paper). The projection g
is the dense layer of the MinAtar torso, so the Q head reads C51 logits from
g(f(s)) with the same network as `dqn.py --loss c51` on MinAtar.

Targets: `--target ema` keeps an EMA copy theta_bar <- tau theta_bar + (1 - tau) theta
after every learning update (tau = `ema_tau`, 0.99 in the paper without
augmentation); `--target online` uses the online network under stop-gradient
(tau = 0, the paper's choice with augmentation). Augmentation (`shift`, DrQ's
random shift): pad each side by `pad` pixels, replicating the edge, and crop back to
the original size at a random offset; MinAtar frames are 10x10, so the default
pad is 1 (the paper pads 84x84 Atari frames by 4). `shift_intensity` also scales
each frame by 1 + 0.05 clip(N(0, 1), -2, 2). Acting and evaluation see raw frames.

Left out from the paper: noisy nets and dueling (exploration is dqn.py's
epsilon-greedy), the latent renormalisation and the batch norm of the transition
model. Acting, replay and exploration are every epsilon-greedy learner's
(`rlzoo.value_based`); the C51/HL-Gauss loss is dqn.py's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from rlzoo import replay, value_based
from rlzoo.algorithms import dqn
from rlzoo.env_adapter import VecEnv, episode_metrics
from rlzoo.envs import make_env
from rlzoo.networks import MinAtarCNN, PatchConv, orthogonal_dense
from rlzoo.returns import n_step_window
from rlzoo.trainer import POSITIVE, Range, Trainer, check
from rlzoo.updates import is_due, optimizer_step, polyak, tree_select

AUGMENTATIONS = ("none", "shift", "shift_intensity")
TARGETS = ("ema", "online")
INTENSITY_SCALE = 0.05  # the paper's intensity noise: x * (1 + 0.05 clip(N(0, 1), -2, 2))


@dataclasses.dataclass(frozen=True)
class Config(dqn.Config):
    """DQN's static settings with MinAtar low-data defaults, plus SPR's."""

    env_id: str = "Breakout-MinAtar"
    """Environment id: a MinAtar (image) gymnax id."""
    total_timesteps: int = 100_000
    """Environment steps over all envs (the low-data regime)."""
    num_envs: int = 4
    """Parallel environments per seed."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (over all envs); frames are stored as uint8."""
    batch_size: int = 32
    """Sequences per minibatch."""
    learning_starts: int = 2_000
    """Env steps collected before learning."""
    n_step: int = 3
    """n of the n-step return of the C51 loss."""
    loss: Literal["mse", "huber", "c51", "hl_gauss", "two_hot"] = "c51"
    """Value loss: c51 or hl_gauss (SPR learns with a distributional head)."""
    v_min: float = 0.0
    """Lowest value of the support."""
    v_max: float = 20.0
    """Highest value of the support."""
    k_steps: int = 5
    """K: future latents predicted by the transition model."""
    augmentation: Literal["none", "shift", "shift_intensity"] = "shift"
    """Augmentation of every frame the losses see: none, shift (pad + random crop), shift_intensity."""
    pad: int = 1
    """Pixels padded on each side before the random crop (10x10 MinAtar frames)."""
    target: Literal["ema", "online"] = "ema"
    """Target encoder/projection: an EMA copy (ema_tau) or the online network under stop-gradient."""
    transition_channels: int = 32
    """Channels of the transition model's hidden conv (the MinAtar encoder has 16)."""

    def __post_init__(self):
        super().__post_init__()
        check(self.loss in ("c51", "hl_gauss"), "loss", self.loss, "SPR here learns with c51 or hl_gauss")
        check(not self.dueling, "dueling", self.dueling, "SPR here uses a plain distributional head")
        check(self.k_steps >= 1, "k_steps", self.k_steps, "K must be >= 1")
        check(self.augmentation in AUGMENTATIONS, "augmentation", self.augmentation,
              f"one of {', '.join(AUGMENTATIONS)}")
        check(self.target in TARGETS, "target", self.target, f"one of {', '.join(TARGETS)}")
        check(self.pad >= (1 if self.augmentation != "none" else 0), "pad", self.pad,
              "must be >= 1 with a shift augmentation")
        check(self.transition_channels >= 1, "transition_channels", self.transition_channels, "must be >= 1")
        rows = min(-(-max(self.learning_starts, self.steps_per_update) // self.num_envs),
                   self.buffer_size // self.num_envs)
        starts = (rows - self.sequence_length + 1) * self.num_envs
        check(self.batch_size <= starts, "batch_size", self.batch_size,
              f"must be <= the {max(starts, 0)} sequences of {self.sequence_length} steps in the replay buffer "
              f"when learning starts ({rows} rows x {self.num_envs} envs); raise learning_starts")

    @property
    def sequence_length(self) -> int:
        """Steps per replay sequence: K for the latent rollout, n for the n-step return."""
        return max(self.k_steps, self.n_step)


@struct.dataclass
class HParams(dqn.HParams):
    """DQN's numbers (exploration shortened for 100k steps) plus SPR's weight and EMA rate."""

    exploration_fraction: float = 0.2
    """Fraction of training over which epsilon decays linearly."""
    eps_end: float = 0.01
    """Final exploration epsilon."""
    target_period: float = 100.0
    """Updates between updates of the C51 target network."""
    spr_weight: float = 5.0
    """lambda: weight of the K-step prediction loss."""
    ema_tau: float = 0.99
    """tau of the EMA target: theta_bar <- tau theta_bar + (1 - tau) theta (with --target ema)."""

    BOUNDS: ClassVar[dict[str, Range]] = {**dqn.HParams.BOUNDS, "spr_weight": POSITIVE,
                                          "ema_tau": Range(0.0, 1.0, high_closed=False)}


class SPRNetwork(nn.Module):
    """Encoder f, transition model h, projection g, C51 head and predictor q, as separate methods."""

    num_actions: int
    num_atoms: int
    activation: str = "relu"
    hidden_size: int = 128
    transition_channels: int = 32

    def setup(self):
        self.encoder = MinAtarCNN(hidden_size=self.hidden_size, activation=self.activation, spatial=True)
        self.transition_hidden = PatchConv(self.transition_channels, "SAME")
        self.transition_out = PatchConv(self.encoder.channels, "SAME")
        self.projection = orthogonal_dense(self.hidden_size)
        self.q_head = orthogonal_dense(self.num_actions * self.num_atoms, gain=1.0)
        self.predictor = orthogonal_dense(self.hidden_size, gain=1.0)

    def encode(self, obs: jax.Array) -> jax.Array:
        """f: frames [..., H, W, C] -> feature map [..., H-2, W-2, 16]."""
        return self.encoder(obs)

    def transition(self, latent: jax.Array, action: jax.Array) -> jax.Array:
        """h: (feature map [B, h, w, c], action [B]) -> next feature map, the action one-hot as channels."""
        planes = jax.nn.one_hot(action, self.num_actions)[:, None, None, :]
        planes = jnp.broadcast_to(planes, (*latent.shape[:-1], self.num_actions))
        x = nn.relu(self.transition_hidden(jnp.concatenate([latent, planes], axis=-1)))
        return nn.relu(self.transition_out(x))

    def project(self, latent: jax.Array) -> jax.Array:
        """g: feature map -> [..., hidden] (the dense layer of the MinAtar torso)."""
        return nn.relu(self.projection(latent.reshape(*latent.shape[:-3], -1)))

    def predict(self, projected: jax.Array) -> jax.Array:
        """q: the predictor, a linear layer on the online projection."""
        return self.predictor(projected)

    def q_logits(self, projected: jax.Array) -> jax.Array:
        return self.q_head(projected).reshape(*projected.shape[:-1], self.num_actions, self.num_atoms)

    def __call__(self, obs: jax.Array) -> jax.Array:
        """C51 logits [..., num_actions, num_atoms] of frames (what dqn.td_loss and acting read)."""
        return self.q_logits(self.project(self.encode(obs)))

    def initialize(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        """Touches every submodule, so that `init` with this method creates all parameters."""
        projected = self.project(self.transition(self.encode(obs), action))
        return self.q_logits(projected), self.predict(projected)


class TrainState(NamedTuple):
    params: Any
    target_params: Any  # the C51 bootstrap network, refreshed every target_period updates
    spr_target_params: Any  # the EMA encoder/projection (unused with --target online)
    opt_state: Any
    buffer: replay.ReplayState  # replay.Transition rows, frames stored as uint8
    env_state: Any
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


def cosine_loss(prediction: jax.Array, target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """2 - 2 cos(x, y) over the last axis, = |x/|x| - y/|y||^2 (SPR eq. 4 up to a constant)."""
    normalise = lambda x: x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps * eps))  # noqa: E731
    return 2.0 - 2.0 * jnp.sum(normalise(prediction) * normalise(target), axis=-1)


def masked_prediction_loss(step_losses: jax.Array, mask: jax.Array) -> jax.Array:
    """mean_b (1/K) sum_k m_k loss_{b,k}: steps after the episode's end have zero weight.

    `step_losses` and `mask` are [B, K]; mask[b, k-1] says s_{t+k} is still in the
    episode of s_t (the replay's sequence mask: True up to and including the first done step).
    """
    chex.assert_equal_shape((step_losses, mask))
    return jnp.mean(jnp.where(mask, step_losses, 0.0))


def random_shift(key: jax.Array, frames: jax.Array, pad: int) -> jax.Array:
    """Pads [..., H, W, C] frames by `pad` (edge replicated) and crops H x W at a random offset per frame."""
    height, width, channels = frames.shape[-3:]
    flat = frames.reshape(-1, height, width, channels)
    padded = jnp.pad(flat, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (flat.shape[0], 2), 0, 2 * pad + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(  # noqa: E731
        image, (offset[0], offset[1], 0), (height, width, channels))
    return jax.vmap(crop)(padded, offsets).reshape(frames.shape)


def augment(config: Config, key: jax.Array, frames: jax.Array) -> jax.Array:
    """The configured augmentation of uint8/float frames [..., H, W, C], as float32."""
    frames = frames.astype(jnp.float32)
    if config.augmentation == "none":
        return frames
    shift_key, intensity_key = jax.random.split(key)
    frames = random_shift(shift_key, frames, config.pad)
    if config.augmentation == "shift_intensity":
        noise = jnp.clip(jax.random.normal(intensity_key, (*frames.shape[:-3], 1, 1, 1)), -2.0, 2.0)
        frames = frames * (1.0 + INTENSITY_SCALE * noise)
    return frames


def n_step_from_sequence(sequence: replay.SequenceSample, n: int, gamma) -> replay.NStepSample:
    """The n-step sample of each sequence's first step, read off the sequence (`returns.n_step_window`)."""
    steps = sequence.transitions
    window = n_step_window(steps.reward[:, :n].T, steps.terminated[:, :n].T, sequence.mask[:, :n].T, gamma)
    last = jax.tree.map(lambda x: x[jnp.arange(x.shape[0]), window.steps - 1], steps)  # step t + m - 1
    first = jax.tree.map(lambda x: x[:, 0], steps)
    return replay.NStepSample(sequence.indices, first, last, window.returns, window.discount,
                              jnp.ones_like(window.returns))


def latent_rollout(network: SPRNetwork, params, latent: jax.Array, actions: jax.Array) -> jax.Array:
    """z_k = h(z_{k-1}, a_{t+k-1}) for k = 1..K: [B, h, w, c] and actions [B, K] -> [B, K, h, w, c].

    A Python loop over the static K (unrolled): on XLA CPU a `lax.scan` here made the gradient
    about 15x slower (measured at K = 5, batch 32).
    """
    latents = []
    for k in range(actions.shape[1]):
        latent = network.apply(params, latent, actions[:, k], method=SPRNetwork.transition)
        latents.append(latent)
    return jnp.stack(latents, axis=1)


def spr_loss(config: Config, network: SPRNetwork, params, target_params, sequence: replay.SequenceSample,
             first_frames: jax.Array, key: jax.Array) -> jax.Array:
    """The masked K-step prediction loss (module docstring) from the augmented first frames [B, H, W, C]."""
    k = config.k_steps
    steps = sequence.transitions
    chex.assert_rank(steps.action, 2)
    predicted = latent_rollout(network, params, network.apply(params, first_frames, method=SPRNetwork.encode),
                               steps.action[:, :k])
    predictions = network.apply(params, network.apply(params, predicted, method=SPRNetwork.project),
                                method=SPRNetwork.predict)  # [B, K, D]
    future = augment(config, key, steps.next_obs[:, :k])  # s_{t+k} = next_obs of step t+k-1
    targets = network.apply(target_params, network.apply(target_params, future, method=SPRNetwork.encode),
                            method=SPRNetwork.project)
    step_losses = cosine_loss(predictions, jax.lax.stop_gradient(targets))
    return masked_prediction_loss(step_losses, sequence.mask[:, :k])


def make_train(config: Config) -> Trainer:
    env = make_env(config.env_id)
    check(env.spec.discrete, "env_id", config.env_id, "SPR needs discrete actions")
    check(len(env.spec.obs_shape) == 3, "env_id", config.env_id,
          "SPR's convolutional transition model needs image observations (a MinAtar id)")
    vec_env = VecEnv(env, config.num_envs)
    num_actions = env.spec.num_actions
    network = SPRNetwork(num_actions, config.num_atoms, config.activation,
                         transition_channels=config.transition_channels)
    _, to_q = dqn.make_value_head(config)
    num_updates = config.num_updates

    def init(key: jax.Array, hp: HParams) -> TrainState:
        """Frames are stored as uint8; the EMA target starts as a copy of the online network."""
        init_params = lambda key, obs: network.init(key, obs, jnp.zeros(obs.shape[0], jnp.int32),  # noqa: E731
                                                    method=SPRNetwork.initialize)
        base = value_based.init_state(vec_env, config, key, init_params, value_based.make_optimizer(hp), jnp.uint8)
        return TrainState(base.params, base.target_params, base.params, *base[2:])

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool, eps=0.0) -> jax.Array:
        """Epsilon-greedy on the C51 mean of raw (unaugmented) frames; greedy when evaluating."""
        q_values = to_q(network.apply(state.params, obs))
        return value_based.greedy_or_epsilon_greedy(q_values, key, greedy, eps, num_actions)

    def total_loss(params, state: TrainState, sequence: replay.SequenceSample, key: jax.Array, hp: HParams):
        """L_C51 on the augmented n-step sample + lambda L_SPR, sharing the first frames' augmentation."""
        first_key, next_key, future_key = jax.random.split(key, 3)
        sample = n_step_from_sequence(sequence, config.n_step, hp.gamma)
        first_frames = augment(config, first_key, sample.first.obs)
        sample = sample._replace(first=sample.first._replace(obs=first_frames),
                                 last=sample.last._replace(next_obs=augment(config, next_key, sample.last.next_obs)))
        td, q_mean = dqn.td_loss(config, network, params, state.target_params, sample, hp)
        spr_target = jax.lax.stop_gradient(params) if config.target == "online" else state.spr_target_params
        spr = spr_loss(config, network, params, spr_target, sequence, first_frames, future_key)
        return td + hp.spr_weight * spr, (td, spr, q_mean)

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, sample_key, loss_key = jax.random.split(state.key, 4)
        eps = value_based.epsilon(hp, state.update_index, num_updates)
        state = value_based.collect(vec_env, act, state, rollout_key, eps, config.train_every)

        sequence = replay.sample_sequences(state.buffer, sample_key, config.batch_size, config.sequence_length)
        params, opt_state, (loss, (td, spr, q_mean)) = optimizer_step(
            value_based.make_optimizer(hp), lambda p: total_loss(p, state, sequence, loss_key, hp), state.params,
            state.opt_state)
        learning = ((state.update_index >= config.learning_starts_updates)
                    & replay.can_sample(state.buffer, config.batch_size, config.sequence_length))
        params, opt_state = tree_select(learning, (params, opt_state), (state.params, state.opt_state))
        update_index = state.update_index + 1
        refresh = learning & is_due(update_index, hp.target_period)
        target_params = tree_select(refresh, polyak(state.target_params, params, hp.tau),
                                    state.target_params)
        spr_target_params = tree_select(
            learning, polyak(state.spr_target_params, params, 1.0 - hp.ema_tau),
            state.spr_target_params)
        metrics = {"env_steps": update_index * config.steps_per_update, **episode_metrics(state.env_state),
                   "loss": loss, "td_loss": td, "spr_loss": spr, "q_mean": q_mean, "epsilon": eps,
                   "learning": learning.astype(jnp.float32)}
        state = state._replace(params=params, target_params=target_params, spr_target_params=spr_target_params,
                               opt_state=opt_state, key=key, update_index=update_index)
        return state, metrics

    return value_based.make_trainer(config, vec_env, init, update, act)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("spr", Config, HParams, make_train)


if __name__ == "__main__":
    main()
