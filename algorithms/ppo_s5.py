"""Recurrent PPO with an S5, GRU or LSTM memory (Lu et al., NeurIPS 2023: in-context RL with S5).

    python algorithms/ppo_s5.py                                   # RepeatPrevious-Easy with S5
    python algorithms/ppo_s5.py --env-id StatelessCartPole-Easy --sequence-model gru
    python algorithms/ppo_s5.py --env-id meta/CartPole-v1 --num-steps 1024   # meta-RL: random projections, trials

The agent is encoder -> sequence model -> separate actor and critic MLP heads. Per
update: collect `num_steps` steps from `num_envs` environments acting one step at a
time, carrying each env's hidden state across steps *and* across rollouts; an
episode start (the step after a done flag) resets it. Then `num_epochs` passes of
PPO's clipped objective (`rlzoo.algorithms.ppo.ppo_loss`, PPO eq. 7) over
minibatches of whole sequences: the envs are split into `num_minibatches` groups,
and each group's rollout is replayed in one call of the sequence model from the
hidden state it had when the rollout began (S5: the resettable scan, parallel
associative or sequential, `--scan`; GRU/LSTM: a sequential scan), so the
recomputed policy equals the acting one at the first epoch. GAE bootstraps from V(final observation, hidden state)
on truncation and stops on termination.

`sequence_model="none"` is the memoryless baseline (the same agent without memory).
Evaluation episodes (the run folder's `eval_return`) carry the hidden state from
a fresh start through each episode (`Trainer.act_carry`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from rlzoo.algorithms import ppo
from rlzoo.trainer import Trainer, check
from rlzoo.env_adapter import VecEnv, VecEnvState, episode_metrics
from rlzoo.networks import MLP, orthogonal_dense
from rlzoo.returns import gae
from rlzoo.sequence import SCANS, SEQUENCE_MODELS, make_sequence_model
from rlzoo.updates import optimizer_step


@dataclasses.dataclass(frozen=True)
class Config(ppo.Config):
    """PPO's static settings with memory-task defaults, plus the sequence model's (the CLI)."""

    env_id: str = "RepeatPrevious-Easy"
    """Environment id: a POPGym task (RepeatPrevious-Easy, StatelessCartPole-Medium, ...), meta/<id>, gymnax or brax/<name>."""
    total_timesteps: int = 2_000_000
    """Environment steps over all envs."""
    num_envs: int = 64
    """Parallel environments per seed."""
    num_steps: int = 128
    """Steps per environment in each rollout (the training sequence length)."""
    num_minibatches: int = 8
    """Minibatches per epoch, each a group of whole env sequences; must divide num_envs."""
    hidden_sizes: tuple[int, ...] = (64,)
    """Hidden layer sizes of the actor and critic heads (after the sequence model)."""
    sequence_model: Literal["s5", "gru", "lstm", "none"] = "s5"
    """Memory: s5 (parallel scan), gru, lstm, or none (memoryless baseline)."""
    d_model: int = 64
    """Width of the encoder and of the sequence model's output (GRU/LSTM units)."""
    state_size: int = 64
    """S5 state size per layer (conjugate pairs: half of it is stored, complex)."""
    num_layers: int = 2
    """Stacked S5 blocks (GRU and LSTM use one layer)."""
    scan: Literal["auto", "associative", "sequential"] = "auto"
    """How S5 runs over a sequence: associative (parallel) or sequential scan; auto: sequential on CPU (faster there)."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("d_model", "num_layers"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.sequence_model in SEQUENCE_MODELS, "sequence_model", self.sequence_model,
              f"one of {', '.join(SEQUENCE_MODELS)}")
        check(self.scan in SCANS, "scan", self.scan, f"one of {', '.join(SCANS)}")
        check(self.state_size > 0 and self.state_size % 2 == 0, "state_size", self.state_size,
              "must be a positive even number (S5 keeps one state of each conjugate pair)")
        check(self.num_envs % self.num_minibatches == 0, "num_minibatches", self.num_minibatches,
              f"must divide num_envs = {self.num_envs} (minibatches keep whole sequences)")


@struct.dataclass
class HParams(ppo.HParams):
    """PPO's numbers, with a higher learning rate for the memory tasks."""

    lr: float = 5e-4
    """Adam learning rate (the start of the annealing schedule)."""


class RecurrentActorCritic(nn.Module):
    """Dense encoder -> sequence model -> actor and critic MLP heads.

    `__call__(carry, obs, reset)` takes [B, ...] obs and [B] resets (one step) or
    [T, B, ...] and [T, B] (a sequence) and returns (carry, policy, value).
    """

    memory: nn.Module
    num_actions: int
    discrete: bool
    d_model: int = 64
    hidden_sizes: tuple[int, ...] = (64,)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, carry: Any, obs: jax.Array, reset: jax.Array) -> tuple[Any, distrax.Distribution, jax.Array]:
        x = nn.gelu(orthogonal_dense(self.d_model)(obs.astype(jnp.float32)))
        carry, features = self.memory(carry, (x, reset))
        logits = orthogonal_dense(self.num_actions, gain=0.01)(MLP(self.hidden_sizes, self.activation)(features))
        value = orthogonal_dense(1, gain=1.0)(MLP(self.hidden_sizes, self.activation)(features)).squeeze(-1)
        if self.discrete:
            return carry, distrax.Categorical(logits=logits), value
        log_std = self.param("log_std", nn.initializers.zeros, (self.num_actions,))
        return carry, distrax.MultivariateNormalDiag(logits, jnp.exp(jnp.broadcast_to(log_std, logits.shape))), value


class SequenceInputs(NamedTuple):
    """What the network needs to replay a minibatch of whole sequences."""

    carry: Any  # hidden state at the start of the rollout, [n, ...]
    obs: jax.Array  # [T, n, ...]
    reset: jax.Array  # [T, n]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    env_state: VecEnvState
    obs: jax.Array  # [N, ...] observation to act on next
    reset: jax.Array  # [N] whether that observation starts an episode
    carry: Any  # [N, ...] hidden state before reading `obs`
    key: jax.Array
    update_index: jax.Array


class Rollout(NamedTuple):
    obs: jax.Array
    reset: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_value: jax.Array  # V(s'_t) from the hidden state after step t, not reset


def make_env_and_network(config: Config) -> tuple[VecEnv, RecurrentActorCritic]:
    vec_env = ppo.make_vec_env(config)
    memory = make_sequence_model(config.sequence_model, config.d_model, config.state_size, config.num_layers,
                                 config.scan)
    network = RecurrentActorCritic(memory, vec_env.spec.num_actions, vec_env.spec.discrete, config.d_model,
                                   config.hidden_sizes, config.activation)
    return vec_env, network


def split_envs(x: jax.Array, order: jax.Array, num_groups: int, axis: int) -> jax.Array:
    """Permutes the env axis `axis` by `order` and splits it into `num_groups` groups: a new leading axis."""
    x = jnp.moveaxis(jnp.take(x, order, axis=axis), axis, 0)
    x = x.reshape(num_groups, x.shape[0] // num_groups, *x.shape[1:])
    return jnp.moveaxis(x, 1, axis + 1)


def make_train(config: Config) -> Trainer:
    vec_env, network = make_env_and_network(config)
    num_updates = config.num_updates
    batch_size = config.num_envs * config.num_steps

    def replay_sequences(params: Any, inputs: SequenceInputs) -> tuple[distrax.Distribution, jax.Array]:
        """(policy, value) of whole sequences, replayed from the hidden state at the rollout's start."""
        _, policy, value = network.apply(params, inputs.carry, inputs.obs, inputs.reset)
        return policy, value

    def init(key: jax.Array, hp: HParams) -> TrainState:
        key, net_key, env_key = jax.random.split(key, 3)
        env_state, obs = vec_env.reset(env_key)
        carry = network.memory.initialize_carry(config.num_envs)
        reset = jnp.ones((config.num_envs,), jnp.bool_)
        params = network.init(net_key, carry, obs, reset)
        opt_state = ppo.make_optimizer(config, hp).init(params)
        return TrainState(params, opt_state, env_state, obs, reset, carry, key, jnp.zeros((), jnp.int32))

    def env_step(state: TrainState, key: jax.Array) -> tuple[TrainState, Rollout]:
        act_key, env_key = jax.random.split(key)
        carry, policy, value = network.apply(state.params, state.carry, state.obs, state.reset)
        action = policy.sample(seed=act_key)
        env_state, ts = vec_env.step(env_key, state.env_state, action)
        # The true next observation continues the episode from the new hidden state (no reset).
        _, _, next_value = network.apply(state.params, carry, ts.final_obs, jnp.zeros_like(state.reset))
        step = Rollout(state.obs, state.reset, action, policy.log_prob(action), value, ts.reward,
                       ts.terminated, ts.truncated, next_value)
        done = jnp.logical_or(ts.terminated, ts.truncated)
        return state._replace(env_state=env_state, obs=ts.obs, reset=done, carry=carry), step

    def update_minibatch(carry, batch: ppo.Batch):
        params, opt_state, hp = carry
        params, opt_state, (_, stats) = optimizer_step(
            ppo.make_optimizer(config, hp), lambda p: ppo.ppo_loss(replay_sequences, p, batch, hp,
                                                                   config.clip_value_loss), params, opt_state)
        return (params, opt_state, hp), stats

    def update_epoch(carry, key: jax.Array, batch: ppo.Batch):
        """One pass over the rollout in minibatches of whole env sequences."""
        order = jax.random.permutation(key, config.num_envs)
        groups = config.num_minibatches
        minibatches = ppo.Batch(
            obs=SequenceInputs(
                carry=jax.tree.map(lambda x: split_envs(x, order, groups, axis=0), batch.obs.carry),
                obs=split_envs(batch.obs.obs, order, groups, axis=1),
                reset=split_envs(batch.obs.reset, order, groups, axis=1)),
            **{name: split_envs(getattr(batch, name), order, groups, axis=1)
               for name in ("action", "log_prob", "value", "advantage", "target")})
        return jax.lax.scan(update_minibatch, carry, minibatches)

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, epoch_key = jax.random.split(state.key, 3)
        initial_carry = state.carry
        state, rollout = jax.lax.scan(env_step, state, jax.random.split(rollout_key, config.num_steps))
        chex.assert_shape(rollout.reward, (config.num_steps, config.num_envs))

        advantage, target = gae(rollout.reward, rollout.value, rollout.next_value, rollout.terminated,
                                rollout.truncated, hp.gamma, hp.gae_lambda)
        batch = ppo.Batch(SequenceInputs(initial_carry, rollout.obs, rollout.reset), rollout.action,
                          rollout.log_prob, rollout.value, advantage, target)
        (params, opt_state, _), stats = jax.lax.scan(
            lambda carry, k: update_epoch(carry, k, batch),
            (state.params, state.opt_state, hp), jax.random.split(epoch_key, config.num_epochs))

        update_index = state.update_index + 1
        metrics = {"env_steps": update_index * batch_size, **episode_metrics(state.env_state),
                   **jax.tree.map(jnp.mean, stats)}
        state = state._replace(params=params, opt_state=opt_state, key=key, update_index=update_index)
        return state, metrics

    def act_carry(num_envs: int) -> tuple[Any, jax.Array]:
        """An episode start for evaluation: a fresh hidden state and a reset flag for the first step."""
        return network.memory.initialize_carry(num_envs), jnp.ones((num_envs,), jnp.bool_)

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool,
            carry: tuple[Any, jax.Array]) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        """One step of the policy on raw observations (normalised with the frozen training statistics),
        reading and returning the hidden state; evaluation counts each env's first episode only."""
        if state.env_state.obs_stats is not None:
            obs = state.env_state.obs_stats.normalize(obs)
        hidden, reset = carry
        hidden, policy, _ = network.apply(state.params, hidden, obs, reset)
        action = policy.mode() if greedy else policy.sample(seed=key)
        return action, (hidden, jnp.zeros_like(reset))

    return Trainer(init, update, num_updates, batch_size, act, vec_env.env, act_carry=act_carry)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("ppo_s5", Config, HParams, make_train)


if __name__ == "__main__":
    main()
