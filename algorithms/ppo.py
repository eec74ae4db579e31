"""PPO with GAE (Schulman et al., 2017; 2016), discrete and continuous actions.

    python algorithms/ppo.py                          # CartPole-v1, PureJaxRL's defaults
    python algorithms/ppo.py --env-id Pendulum-v1 --num-envs 16 --num-steps 256
    python algorithms/ppo.py --num-seeds 4 --sweep lr=1e-4,3e-4,1e-3

Per update: collect `num_steps` steps from `num_envs` environments, compute GAE
advantages (bootstrapping from the final observation on truncation, not on
termination), then `num_epochs` passes of `num_minibatches` minibatches of the
clipped surrogate objective (eq. 7 of the PPO paper) plus a clipped value loss and
an entropy bonus. The policy is categorical or a diagonal Gaussian with a
state-independent log-std, chosen from the environment's action space.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer, check, check_rollout_sizes
from rlzoo.env_adapter import VecEnv, VecEnvState, episode_metrics
from rlzoo.envs import make_env
from rlzoo.networks import ACTIVATIONS, ActorCritic, masked_policy
from rlzoo.returns import gae
from rlzoo.updates import optimizer_step, shuffled_minibatches


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: they fix shapes and the compiled program (the CLI)."""

    env_id: str = "CartPole-v1"
    """Environment id: a gymnax id, brax/<name>, <package>/<id> (craftax, navix, ...), or an rlzoo id."""
    total_timesteps: int = 500_000
    """Environment steps over all envs."""
    num_envs: int = 4
    """Parallel environments per seed."""
    num_steps: int = 128
    """Steps per environment in each rollout."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_envs * num_steps."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and critic MLPs."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu, swish or gelu."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over training."""
    clip_value_loss: bool = True
    """Clip the value update to clip_eps around the rollout's values."""
    normalize: Literal["auto", "none", "obs", "obs+reward"] = "auto"
    """Observation/reward normalisation; auto: obs+reward for continuous actions, none for discrete."""
    brax_backend: str = "positional"
    """Physics backend for brax/<name> ids."""

    def __post_init__(self):
        check_rollout_sizes(self)
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "sizes must be >= 1")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 2.5e-4
    """Adam learning rate (the start of the annealing schedule)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """PPO ratio clip (and value clip) epsilon."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "gae_lambda": UNIT_INTERVAL, "clip_eps": POSITIVE,
        "ent_coef": NON_NEGATIVE, "vf_coef": NON_NEGATIVE, "max_grad_norm": POSITIVE,
    }


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


class Rollout(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array
    action_mask: jax.Array | None = None  # legal actions of `obs`, on envs with a mask


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    action_mask: jax.Array | None = None


def make_vec_env(config: Config) -> VecEnv:
    """The training envs, normalised as `config.normalize` says (auto: obs+reward for continuous actions)."""
    env = make_env(config.env_id, backend=config.brax_backend)
    normalize = config.normalize
    if normalize == "auto":
        normalize = "none" if env.spec.discrete else "obs+reward"
    return VecEnv(env, config.num_envs, normalize_obs=normalize != "none", normalize_reward=normalize == "obs+reward")


def make_optimizer(config: Config, hp: HParams) -> optax.GradientTransformation:
    """Adam (eps 1e-5) after global-norm clipping, its rate annealed linearly to 0 over the updates if asked."""
    def learning_rate(count):
        if not config.anneal_lr:
            return hp.lr
        update = count // (config.num_epochs * config.num_minibatches)
        return hp.lr * (1.0 - update / config.num_updates)

    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(learning_rate, eps=1e-5))


def ppo_loss(apply_fn, params: Any, batch: Batch, hp: HParams, clip_value: bool):
    """Clipped surrogate (PPO eq. 7) + vf_coef * value loss - ent_coef * entropy.

    `apply_fn(params, batch.obs) -> (policy, V)`: a network's `apply`, or `ppo_s5.py`'s replay of sequences.
    On an env with an action mask the policy is the one that acted: restricted to the legal actions."""
    dist, value = apply_fn(params, batch.obs)
    dist = masked_policy(dist, getattr(batch, "action_mask", None))
    log_ratio = dist.log_prob(batch.action) - batch.log_prob
    ratio = jnp.exp(log_ratio)
    advantage = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    policy_loss = -jnp.minimum(ratio * advantage,
                               jnp.clip(ratio, 1 - hp.clip_eps, 1 + hp.clip_eps) * advantage).mean()
    value_error = jnp.square(value - batch.target)
    if clip_value:
        clipped = batch.value + jnp.clip(value - batch.value, -hp.clip_eps, hp.clip_eps)
        value_error = jnp.maximum(value_error, jnp.square(clipped - batch.target))
    value_loss = 0.5 * value_error.mean()
    entropy = dist.entropy().mean()
    total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
    stats = {
        "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
        "approx_kl": ((ratio - 1) - log_ratio).mean(),  # Schulman's k3 estimator
        "clip_fraction": (jnp.abs(ratio - 1) > hp.clip_eps).mean(),
    }
    return total, stats


def make_train(config: Config) -> Trainer:
    vec_env = make_vec_env(config)
    spec = vec_env.spec
    network = ActorCritic(spec.obs_shape, spec.num_actions, spec.discrete, config.hidden_sizes, config.activation)
    num_updates = config.num_updates
    batch_size = config.num_envs * config.num_steps

    def init(key: jax.Array, hp: HParams) -> TrainState:
        key, net_key, env_key = jax.random.split(key, 3)
        env_state, obs = vec_env.reset(env_key)
        params = network.init(net_key, obs)
        opt_state = make_optimizer(config, hp).init(params)
        return TrainState(params, opt_state, env_state, obs, key, jnp.zeros((), jnp.int32))

    def env_step(state: TrainState, key: jax.Array) -> tuple[TrainState, Rollout]:
        act_key, env_key = jax.random.split(key)
        dist, value = network.apply(state.params, state.obs)
        mask = vec_env.action_mask(state.env_state)
        dist = masked_policy(dist, mask)
        action = dist.sample(seed=act_key)
        env_state, ts = vec_env.step(env_key, state.env_state, action)
        step = Rollout(state.obs, action, dist.log_prob(action), value, ts.reward,
                       ts.terminated, ts.truncated, ts.final_obs, mask)
        return state._replace(env_state=env_state, obs=ts.obs), step

    def update_minibatch(carry, batch: Batch):
        params, opt_state, hp = carry
        loss_fn = lambda p: ppo_loss(network.apply, p, batch, hp, config.clip_value_loss)  # noqa: E731
        params, opt_state, (_, stats) = optimizer_step(make_optimizer(config, hp), loss_fn, params, opt_state)
        return (params, opt_state, hp), stats

    def update_epoch(carry, key: jax.Array, batch: Batch):
        minibatches = shuffled_minibatches(key, batch, config.num_minibatches)
        return jax.lax.scan(update_minibatch, carry, minibatches)

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, epoch_key = jax.random.split(state.key, 3)
        state, rollout = jax.lax.scan(env_step, state, jax.random.split(rollout_key, config.num_steps))
        chex.assert_shape(rollout.reward, (config.num_steps, config.num_envs))

        next_values = network.apply(state.params, rollout.final_obs, method=ActorCritic.value)
        advantage, target = gae(rollout.reward, rollout.value, next_values, rollout.terminated,
                                rollout.truncated, hp.gamma, hp.gae_lambda)
        flat = lambda x: x.reshape(batch_size, *x.shape[2:])  # noqa: E731
        batch = Batch(*map(flat, (rollout.obs, rollout.action, rollout.log_prob, rollout.value, advantage, target)),
                      action_mask=jax.tree.map(flat, rollout.action_mask))

        (params, opt_state, _), stats = jax.lax.scan(
            lambda carry, k: update_epoch(carry, k, batch),
            (state.params, state.opt_state, hp), jax.random.split(epoch_key, config.num_epochs))

        update_index = state.update_index + 1
        metrics = {"env_steps": update_index * batch_size, **episode_metrics(state.env_state),
                   **jax.tree.map(jnp.mean, stats)}
        state = state._replace(params=params, opt_state=opt_state, key=key, update_index=update_index)
        return state, metrics

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool, mask: jax.Array | None = None):
        """The current policy on raw observations (normalised with the frozen training statistics), among the
        legal actions of `mask` on envs with one."""
        if state.env_state.obs_stats is not None:
            obs = state.env_state.obs_stats.normalize(obs)
        dist = masked_policy(network.apply(state.params, obs, method=ActorCritic.policy), mask)
        return dist.mode() if greedy else dist.sample(seed=key)

    return Trainer(init, update, num_updates, batch_size, act, vec_env.env, honours_action_mask=True)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("ppo", Config, HParams, make_train)


if __name__ == "__main__":
    main()
