"""PQN: parallelised Q-learning without replay or target network (Gallici et al., ICLR 2025, arXiv 2407.04811).

    python algorithms/pqn.py                                   # CartPole-v1, purejaxql's CartPole configuration
    python algorithms/pqn.py --env-id Breakout-MinAtar --total-timesteps 10000000 --num-envs 128 --num-steps 32 \\
        --num-epochs 2 --num-minibatches 32 --lr 5e-4 --lam 0.65 --eps-end 0.05 --exploration-fraction 0.1 \\
        --reward-scale 1                                       # purejaxql's MinAtar configuration

Per update, like PPO: act epsilon-greedily for `num_steps` steps in each of `num_envs`
environments, then turn the rollout into Q(lambda) targets with the current network,

    G_t = r_t + gamma (1 - terminated_t) [(1 - lambda) max_a Q(s'_t, a) + lambda G_{t+1}],

cut at episode ends and at the end of the rollout (`rlzoo.returns.lambda_returns`), and
regress Q(s_t, a_t) on them for `num_epochs` passes of `num_minibatches` minibatches. There
is no replay buffer and no target network: normalisation in the Q-network (LayerNorm by
default) is what keeps this online TD learning stable (the paper's main result), and many
parallel environments decorrelate each batch.

Defaults: purejaxql's `pqn_cartpole.yaml` (32 envs x 64 steps, 5e5 steps, 4 epochs x 16
minibatches, 2 x 256 ReLU with LayerNorm, RAdam, lr 1e-4 decayed linearly to 0, max grad norm 10,
reward scale 0.1, gamma 0.99, lambda 0.95, epsilon 1 -> 0.2 over the first 20% of
updates). One difference, on purpose: at a time-limit truncation the target bootstraps from
the true final observation (purejaxql bootstraps from nothing there, as at termination).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo.env_adapter import VecEnv, VecEnvState, episode_metrics
from rlzoo.envs import make_env
from rlzoo.networks import ACTIVATIONS, NORMS, QNetwork
from rlzoo.returns import lambda_returns
from rlzoo.trainer import POSITIVE, UNIT_INTERVAL, Range, Trainer, check, check_rollout_sizes
from rlzoo.updates import optimizer_step, shuffled_minibatches
from rlzoo.value_based import EVALUATION_EPSILON, epsilon, greedy_or_epsilon_greedy, masked_q_values


OPTIMIZERS = {"radam": optax.radam, "adam": optax.adam}


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: they fix shapes and the compiled program (the CLI)."""

    env_id: str = "CartPole-v1"
    """Environment id with discrete actions: a gymnax id, <package>/<id> (pgx/2048, ...) or an rlzoo id."""
    total_timesteps: int = 500_000
    """Environment steps over all envs."""
    num_envs: int = 32
    """Parallel environments per seed."""
    num_steps: int = 64
    """Steps per environment in each rollout."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 16
    """Minibatches per epoch; must divide num_envs * num_steps."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the Q-network MLP (image observations use the MinAtar CNN)."""
    activation: str = "relu"
    """Hidden activation."""
    norm: Literal["layer", "batch", "none"] = "layer"
    """Normalisation after each hidden layer: layer, batch or none."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over all gradient steps."""
    optimizer: Literal["radam", "adam"] = "radam"
    """RAdam (Liu et al., 2020), as every purejaxql PQN script uses, or Adam."""

    def __post_init__(self):
        check_rollout_sizes(self)
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "sizes must be >= 1")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        check(self.norm in NORMS, "norm", self.norm, f"one of {', '.join(NORMS)}")
        check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 1e-4
    """Learning rate (the start of the decay)."""
    gamma: float = 0.99
    """Discount factor."""
    lam: float = 0.95
    """Q(lambda) mixing: 0 gives one-step Q-learning targets, 1 Monte Carlo returns cut at the rollout's end."""
    eps_start: float = 1.0
    """Initial exploration epsilon."""
    eps_end: float = 0.2
    """Final exploration epsilon."""
    exploration_fraction: float = 0.2
    """Fraction of the updates over which epsilon decays linearly."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this in the targets (returns and metrics stay unscaled)."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "lam": UNIT_INTERVAL, "eps_start": UNIT_INTERVAL,
        "eps_end": UNIT_INTERVAL, "exploration_fraction": Range(0.0, 1.0, low_closed=False),
        "max_grad_norm": POSITIVE, "reward_scale": POSITIVE,
    }


class TrainState(NamedTuple):
    params: Any
    batch_stats: Any  # BatchNorm's running statistics ({} unless norm == "batch")
    opt_state: Any
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


class Rollout(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_q_values: jax.Array  # Q(s'_t, .) of the true next observation (the final one at an episode's end)


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    target: jax.Array


def q_lambda_targets(rollout: Rollout, next_q_values: jax.Array, hp: HParams) -> jax.Array:
    """G^lambda_t from max_a Q(s'_t, a) of the true next observations: [T, num_envs] (on an env with an action
    mask, `next_q_values` has its illegal actions masked already, `masked_q_values`)."""
    next_values = next_q_values.max(axis=-1)
    return lambda_returns(hp.reward_scale * rollout.reward, next_values, rollout.terminated, rollout.truncated,
                          hp.gamma, hp.lam)


def pqn_loss(q_values: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """0.5 E[(Q(s, a) - sg(G^lambda))^2]: the paper's PQN regression on Q(lambda) targets (targets are fixed
    for the whole update, computed before it, so no gradient flows into them)."""
    chex.assert_equal_shape([batch.action, batch.target])
    q_taken = jnp.take_along_axis(q_values, batch.action[:, None], axis=-1)[:, 0]
    loss = 0.5 * jnp.square(q_taken - batch.target).mean()
    return loss, {"loss": loss, "q_value": q_taken.mean()}


def make_optimizer(config: Config, hp: HParams) -> optax.GradientTransformation:
    """RAdam or Adam after global-norm clipping, its rate decayed linearly to 0 over all gradient steps if asked."""
    steps = config.num_updates * config.num_epochs * config.num_minibatches

    def learning_rate(count):
        return hp.lr * (1.0 - count / steps) if config.anneal_lr else hp.lr

    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm),
                       OPTIMIZERS[config.optimizer](learning_rate))


def make_train(config: Config) -> Trainer:
    env = make_env(config.env_id)
    check(env.spec.discrete, "env_id", config.env_id, "PQN needs discrete actions")
    vec_env = VecEnv(env, config.num_envs)
    num_actions = env.spec.num_actions
    network = QNetwork(env.spec.obs_shape, num_actions, hidden_sizes=config.hidden_sizes,
                       activation=config.activation, norm=config.norm)
    batch_size = config.num_envs * config.num_steps

    def q_values(state: TrainState, obs: jax.Array) -> jax.Array:
        """Q(obs, .) for acting and targets: BatchNorm, if used, with its running statistics."""
        return network.apply({"params": state.params, **state.batch_stats}, obs)

    def init(key: jax.Array, hp: HParams) -> TrainState:
        key, net_key, env_key = jax.random.split(key, 3)
        env_state, obs = vec_env.reset(env_key)
        variables = network.init(net_key, obs)
        params, batch_stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}
        opt_state = make_optimizer(config, hp).init(params)
        return TrainState(params, batch_stats, opt_state, env_state, obs, key, jnp.zeros((), jnp.int32))

    def env_step(state: TrainState, key: jax.Array, eps: jax.Array) -> tuple[TrainState, Rollout]:
        act_key, env_key = jax.random.split(key)
        mask = vec_env.action_mask(state.env_state)  # None unless the env has action masks
        action = greedy_or_epsilon_greedy(q_values(state, state.obs), act_key, False, eps, num_actions, mask)
        env_state, ts = vec_env.step(env_key, state.env_state, action)
        # Q of the true next observation, here, one step's envs at a time: 20% faster on Breakout-MinAtar than one
        # pass over the whole rollout's final observations after it (benchmarks/README.md, PQN parity).
        next_q = masked_q_values(q_values(state, ts.final_obs), vec_env.action_mask(env_state, final=True))
        step = Rollout(state.obs, action, ts.reward, ts.terminated, ts.truncated, next_q)
        return state._replace(env_state=env_state, obs=ts.obs), step

    def update_minibatch(carry, batch: Batch):
        params, batch_stats, opt_state, hp = carry

        def loss_fn(p):
            if config.norm == "batch":
                q, new_stats = network.apply({"params": p, **batch_stats}, batch.obs, train=True,
                                             mutable=["batch_stats"])
            else:
                q, new_stats = network.apply({"params": p}, batch.obs), batch_stats
            loss, stats = pqn_loss(q, batch)
            return loss, (stats, new_stats)

        params, opt_state, (_, (stats, batch_stats)) = optimizer_step(make_optimizer(config, hp), loss_fn, params,
                                                                      opt_state)
        return (params, batch_stats, opt_state, hp), stats

    def update_epoch(carry, key: jax.Array, batch: Batch):
        minibatches = shuffled_minibatches(key, batch, config.num_minibatches)
        return jax.lax.scan(update_minibatch, carry, minibatches)

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, epoch_key = jax.random.split(state.key, 3)
        eps = epsilon(hp, state.update_index, config.num_updates)
        state, rollout = jax.lax.scan(lambda s, k: env_step(s, k, eps), state,
                                      jax.random.split(rollout_key, config.num_steps))
        chex.assert_shape(rollout.reward, (config.num_steps, config.num_envs))

        targets = q_lambda_targets(rollout, rollout.next_q_values, hp)
        flat = lambda x: x.reshape(batch_size, *x.shape[2:])  # noqa: E731
        batch = Batch(flat(rollout.obs), flat(rollout.action), flat(targets))
        (params, batch_stats, opt_state, _), stats = jax.lax.scan(
            lambda carry, k: update_epoch(carry, k, batch),
            (state.params, state.batch_stats, state.opt_state, hp), jax.random.split(epoch_key, config.num_epochs))

        update_index = state.update_index + 1
        metrics = {"env_steps": update_index * batch_size, **episode_metrics(state.env_state),
                   **jax.tree.map(jnp.mean, stats), "epsilon": eps}
        state = state._replace(params=params, batch_stats=batch_stats, opt_state=opt_state, key=key,
                               update_index=update_index)
        return state, metrics

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool, mask: jax.Array | None = None):
        """Greedy, or epsilon-greedy with epsilon = EVALUATION_EPSILON (0.05, as the replay learners), among the
        legal actions of `mask` on envs with one."""
        return greedy_or_epsilon_greedy(q_values(state, obs), key, greedy, EVALUATION_EPSILON, num_actions, mask)

    return Trainer(init, update, config.num_updates, batch_size, act, env, honours_action_mask=True)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("pqn", Config, HParams, make_train)


if __name__ == "__main__":
    main()
