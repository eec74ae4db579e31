"""ZP, the minimalist self-predictive representation (Ni et al., ICLR 2024), on a DQN-style learner.

    python algorithms/zp.py                                     # CartPole-v1 with 16 distractor dimensions
    python algorithms/zp.py --zp-target detached --num-distractors 64
    python algorithms/zp.py --zp-steps 3 --zp-coef 1.0          # predict 3 latent steps ahead

An encoder phi maps an observation to a latent z; a Q-head reads Q(z, .); a latent
model g predicts the next latent from (z, a). Both losses train phi:

    L_RL = E[(r + gamma (1 - term) max_a' Q_bar(phi_bar(s'), a') - Q(phi(s), a))^2]   (DQN on the latent)
    L_ZP = mean_k E[|| g(z_hat_{t+k}, a_{t+k}) - target(s_{t+k+1}) ||^2],  z_hat_t = phi(s_t)   (Ni et al., eq. 6, K = 1)

with the ZP target one of `online` phi(s') (gradients flow into it), `detached`
sg(phi(s')), or `ema` phi_bar(s'), an exponential moving average of phi
(tau_ema = 0.005 per update, the paper's recommendation). The K = `zp_steps`
predictions roll g forward and stop at the episode's end. Q_bar and phi_bar
are the same EMA copy. Acting, replay and the epsilon schedule are those of
every epsilon-greedy learner (`rlzoo.value_based`).
`num_distractors` appends that many N(0, 1) dimensions to every observation
(`rlzoo.envs.distractor`); the latent's effective rank (srank, Kumar et al.,
2021) is logged to show whether it collapses.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from rlzoo import replay, value_based
from rlzoo.env_adapter import VecEnv, episode_metrics
from rlzoo.replay import Transition
from rlzoo.trainer import NON_NEGATIVE, Range, Trainer, check
from rlzoo.updates import optimizer_step, polyak, tree_select
from rlzoo.value_based import EpsilonGreedyHParams, ReplayConfig, TrainState
from rlzoo.envs import make_env
from rlzoo.envs.distractor import wrap_env
from rlzoo.networks import MLP, orthogonal_dense

TARGETS = ("online", "detached", "ema")


@dataclasses.dataclass(frozen=True)
class Config(ReplayConfig):
    """DQN's env, budget and replay settings with ZP's defaults, plus ZP's own (the CLI)."""

    env_id: str = "CartPole-v1"
    """Environment id: a gymnax id or an rlzoo id with discrete actions and flat observations."""
    total_timesteps: int = 80_000
    """Environment steps over all envs."""
    num_envs: int = 4
    """Parallel environments per seed."""
    buffer_size: int = 50_000
    """Replay capacity in transitions (over all envs)."""
    batch_size: int = 64
    """Minibatch size."""
    learning_starts: int = 2_000
    """Env steps collected before learning."""
    hidden_sizes: tuple[int, ...] = (128,)
    """Hidden layers of the encoder, the latent model and the Q-head."""
    num_distractors: int = 16
    """N(0, 1) noise dimensions appended to every observation (0: none)."""
    zp_target: Literal["online", "detached", "ema"] = "ema"
    """Target of the ZP loss: online phi(s'), detached sg(phi(s')), or the EMA encoder phi_bar(s')."""
    zp_steps: int = 1
    """K: latent steps predicted ahead by rolling the latent model."""
    latent_dim: int = 32
    """Size of the latent z."""

    def __post_init__(self):
        check(self.latent_dim >= 1, "latent_dim", self.latent_dim, "must be >= 1")
        check(self.zp_steps >= 1, "zp_steps", self.zp_steps, "K must be >= 1")
        check(self.zp_target in TARGETS, "zp_target", self.zp_target, f"one of {', '.join(TARGETS)}")
        check(self.num_distractors >= 0, "num_distractors", self.num_distractors, "must be >= 0")
        super().__post_init__()

    @property
    def sequence_length(self) -> int:
        return self.zp_steps


@struct.dataclass
class HParams(EpsilonGreedyHParams):
    """The epsilon-greedy learner's numbers with ZP's defaults, plus ZP's weight and EMA step."""

    lr: float = 1e-3
    """Adam learning rate."""
    exploration_fraction: float = 0.2
    """Fraction of training over which epsilon decays linearly."""
    zp_coef: float = 1.0
    """Weight of the ZP loss."""
    tau_ema: float = 0.005
    """Polyak step of the EMA encoder and Q-head, every update."""

    BOUNDS: ClassVar[dict[str, Range]] = {**EpsilonGreedyHParams.BOUNDS, "zp_coef": NON_NEGATIVE,
                                          "tau_ema": Range(0.0, 1.0, low_closed=False)}


class ZPNetwork(nn.Module):
    """Encoder phi(s) -> z, latent model g(z, a) -> z', and Q-head Q(z) -> [num_actions]."""

    num_actions: int
    latent_dim: int = 64
    hidden_sizes: tuple[int, ...] = (256,)
    activation: str = "relu"

    def setup(self):
        self.encoder = nn.Sequential([MLP(self.hidden_sizes, self.activation), orthogonal_dense(self.latent_dim, 1.0)])
        self.model = nn.Sequential([MLP(self.hidden_sizes, self.activation), orthogonal_dense(self.latent_dim, 1.0)])
        self.q_head = nn.Sequential([MLP(self.hidden_sizes, self.activation), orthogonal_dense(self.num_actions, 1.0)])

    def encode(self, obs: jax.Array) -> jax.Array:
        return self.encoder(obs.astype(jnp.float32))

    def transition(self, latent: jax.Array, action: jax.Array) -> jax.Array:
        return self.model(jnp.concatenate([latent, jax.nn.one_hot(action, self.num_actions)], axis=-1))

    def q_values(self, latent: jax.Array) -> jax.Array:
        return self.q_head(latent)

    def __call__(self, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        latent = self.encode(obs)
        return self.q_values(latent), self.transition(latent, action)


def effective_rank(latents: jax.Array, threshold: float = 0.99) -> jax.Array:
    """srank (Kumar et al., 2021, eq. 1): the smallest k whose top-k singular values hold `threshold` of their sum."""
    chex.assert_rank(latents, 2)
    singular = jnp.linalg.svd(latents, compute_uv=False)
    cumulative = jnp.cumsum(singular) / jnp.maximum(jnp.sum(singular), 1e-12)
    return jnp.sum(cumulative < threshold) + 1


def make_env_and_network(config: Config) -> tuple[VecEnv, ZPNetwork]:
    env = make_env(config.env_id)
    check(env.spec.discrete, "env_id", config.env_id, "ZP here needs discrete actions")
    check(len(env.spec.obs_shape) == 1, "env_id", config.env_id, "ZP here needs flat observations")
    env = wrap_env(env, config.num_distractors)
    network = ZPNetwork(env.spec.num_actions, config.latent_dim, config.hidden_sizes, config.activation)
    return VecEnv(env, config.num_envs), network


def zp_loss(config: Config, network: ZPNetwork, params, target_params, sequence: replay.SequenceSample):
    """L_ZP averaged over the batch and the K rolled-out latent steps before the episode's end; returns (loss,
    online latents). A mean over k, not a sum, so --zp-coef means the same for every K."""
    steps = sequence.transitions  # leaves [B, K, ...]
    mask = sequence.mask.astype(jnp.float32)
    if config.zp_target == "ema":
        targets = network.apply(target_params, steps.next_obs, method=ZPNetwork.encode)
    else:
        targets = network.apply(params, steps.next_obs, method=ZPNetwork.encode)
        if config.zp_target == "detached":
            targets = jax.lax.stop_gradient(targets)
    latent = network.apply(params, steps.obs[:, 0], method=ZPNetwork.encode)
    first_latent, errors = latent, []
    for k in range(config.zp_steps):
        latent = network.apply(params, latent, steps.action[:, k], method=ZPNetwork.transition)
        errors.append(jnp.sum(jnp.square(latent - targets[:, k]), axis=-1))
    errors = jnp.stack(errors, axis=1)  # [B, K]
    return jnp.sum(mask * errors) / jnp.sum(mask), first_latent


def rl_loss(network: ZPNetwork, params, target_params, first: Transition, hp: HParams) -> tuple[jax.Array, jax.Array]:
    """The DQN loss on the latent: 0.5 (Q(phi(s), a) - y)^2, y from the EMA encoder and Q-head."""
    q = network.apply(params, network.apply(params, first.obs, method=ZPNetwork.encode), method=ZPNetwork.q_values)
    next_latent = network.apply(target_params, first.next_obs, method=ZPNetwork.encode)
    next_q = network.apply(target_params, next_latent, method=ZPNetwork.q_values)
    y = first.reward + hp.gamma * (1.0 - first.terminated.astype(jnp.float32)) * jnp.max(next_q, axis=-1)
    taken = jnp.take_along_axis(q, first.action[:, None], axis=1)[:, 0]
    return jnp.mean(0.5 * jnp.square(taken - jax.lax.stop_gradient(y))), jnp.mean(taken)


def make_train(config: Config) -> Trainer:
    """The EMA copy (target_params) holds phi_bar and Q_bar."""
    vec_env, network = make_env_and_network(config)
    num_updates = config.num_updates

    def init(key: jax.Array, hp: HParams) -> TrainState:
        init_params = lambda key, obs: network.init(key, obs, jnp.zeros(config.num_envs, jnp.int32))  # noqa: E731
        return value_based.init_state(vec_env, config, key, init_params, value_based.make_optimizer(hp))

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool, eps=0.0) -> jax.Array:
        """Epsilon-greedy on Q(phi(obs), .); greedy when evaluating."""
        q_values = network.apply(state.params, network.apply(state.params, obs, method=ZPNetwork.encode),
                                 method=ZPNetwork.q_values)
        return value_based.greedy_or_epsilon_greedy(q_values, key, greedy, eps, vec_env.spec.num_actions)

    def learn(state: TrainState, key: jax.Array, hp: HParams):
        sequence = replay.sample_sequences(state.buffer, key, config.batch_size, config.zp_steps)
        first = jax.tree.map(lambda x: x[:, 0], sequence.transitions)

        def loss_fn(params):
            td, q_mean = rl_loss(network, params, state.target_params, first, hp)
            zp, latents = zp_loss(config, network, params, state.target_params, sequence)
            return td + hp.zp_coef * zp, (td, zp, q_mean, latents)

        params, opt_state, (_, (td, zp, q_mean, latents)) = optimizer_step(
            value_based.make_optimizer(hp), loss_fn, state.params, state.opt_state)
        return params, opt_state, {"loss": td, "zp_loss": zp, "q_mean": q_mean, "latent_srank": effective_rank(latents)}

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        eps = value_based.epsilon(hp, state.update_index, num_updates)
        state = value_based.collect(vec_env, act, state, rollout_key, eps, config.train_every)

        params, opt_state, stats = learn(state, learn_key, hp)
        learning = state.update_index >= config.learning_starts_updates
        params, opt_state = tree_select(learning, (params, opt_state), (state.params, state.opt_state))
        target_params = tree_select(learning, polyak(state.target_params, params, hp.tau_ema),
                                    state.target_params)
        update_index = state.update_index + 1
        metrics = {"env_steps": update_index * config.steps_per_update, **episode_metrics(state.env_state),
                   "epsilon": eps, **stats}
        state = state._replace(params=params, target_params=target_params, opt_state=opt_state, key=key,
                               update_index=update_index)
        return state, metrics

    return value_based.make_trainer(config, vec_env, init, update, act)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("zp", Config, HParams, make_train)


if __name__ == "__main__":
    main()
