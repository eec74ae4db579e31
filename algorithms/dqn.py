"""DQN and its family: Double, Dueling, n-step, and regression or classification value losses.

    python algorithms/dqn.py                                   # CartPole-v1
    python algorithms/dqn.py --loss c51 --double --dueling --n-step 3
    python algorithms/dqn.py --env-id Breakout-MinAtar --loss hl_gauss --v-min 0 --v-max 100

Per update: `train_every` vectorised steps of epsilon-greedy acting from `num_envs`
environments into a replay buffer held in the training state, then one gradient
step on a sampled minibatch once `learning_starts` steps have been collected.
Targets (Mnih et al., 2015): y = R^(n) + gamma^m (1 - term) Q_bar(s', a*), with
a* = argmax Q_bar(s', .) or, with `double`, argmax Q(s', .) (van Hasselt et al.,
2016). The loss is MSE or Huber regression on y, C51's cross-entropy against the
projected target distribution (Bellemare et al., 2017), or cross-entropy against
HL-Gauss / two-hot encodings of y (Farebrother et al., 2024). The target network
follows the online one every `target_period` updates by Polyak averaging with
`tau` (tau = 1: a hard copy).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import distributional as dist
from rlzoo import replay
from rlzoo.trainer import POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.env_adapter import VecEnv, VecEnvState, mean_last_episode_length, mean_last_episode_return
from rlzoo.envs import make_env
from rlzoo.networks import ACTIVATIONS, QNetwork

LOSSES = ("mse", "huber", "c51", "hl_gauss", "two_hot")


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """What every epsilon-greedy replay learner fixes statically (DQN, i-QN, ZP, SPR): env, budget, replay, net."""

    env_id: str = "CartPole-v1"
    """Environment id: a gymnax id or an rlzoo id with discrete actions."""
    total_timesteps: int = 500_000
    """Environment steps over all envs."""
    num_envs: int = 10
    """Parallel environments per seed."""
    train_every: int = 1
    """Vectorised env steps per gradient step."""
    buffer_size: int = 10_000
    """Replay capacity in transitions (over all envs)."""
    batch_size: int = 128
    """Minibatch size."""
    learning_starts: int = 10_000
    """Env steps collected before learning."""
    hidden_sizes: tuple[int, ...] = (120, 84)
    """Hidden layer sizes of the Q-network MLP (MinAtar uses its CNN)."""
    activation: str = "relu"
    """Hidden activation."""

    def __post_init__(self):
        check(self.total_timesteps > 0, "total_timesteps", self.total_timesteps, "must be > 0")
        for name in ("num_envs", "train_every", "batch_size"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.buffer_size >= self.num_envs, "buffer_size", self.buffer_size, f"must be >= num_envs ({self.num_envs})")
        check(self.learning_starts >= 0, "learning_starts", self.learning_starts, "must be >= 0")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        replay.check_can_sample(self.batch_size, self.buffer_size // self.num_envs, self.num_envs,
                                max(self.learning_starts, self.num_envs * self.train_every,
                                    self.num_envs * self.sequence_length))

    @property
    def sequence_length(self) -> int:
        """Consecutive steps per sampled item (1: single transitions)."""
        return 1

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.train_every

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


@dataclasses.dataclass(frozen=True)
class Config(ReplayConfig):
    """Static settings: they fix shapes and the compiled program (the CLI)."""

    n_step: int = 1
    """n of the n-step return."""
    double: bool = False
    """Double DQN: choose the next action with the online network."""
    dueling: bool = False
    """Dueling head."""
    loss: Literal["mse", "huber", "c51", "hl_gauss", "two_hot"] = "mse"
    """Value loss: regression (mse, huber) or classification (c51, hl_gauss, two_hot)."""
    num_atoms: int = 51
    """Atoms or bins of the classification losses."""
    v_min: float = 0.0
    """Lowest value of the support (classification losses)."""
    v_max: float = 100.0
    """Highest value of the support (classification losses; 100 bounds CartPole at gamma 0.99)."""

    def __post_init__(self):
        check(self.n_step >= 1, "n_step", self.n_step, "must be >= 1")
        check(self.loss in LOSSES, "loss", self.loss, f"one of {', '.join(LOSSES)}")
        check(self.v_min < self.v_max, "v_min", self.v_min, f"must be < v_max ({self.v_max})")
        check(self.num_atoms >= 2, "num_atoms", self.num_atoms, "must be >= 2")
        super().__post_init__()

    @property
    def distributional(self) -> bool:
        return self.loss in ("c51", "hl_gauss", "two_hot")


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 2.5e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 1.0
    """Polyak step of the target update (1: hard copy)."""
    target_period: float = 50.0
    """Updates between target-network updates (50 updates x 10 envs = CleanRL's 500 env steps)."""
    eps_start: float = 1.0
    """Initial exploration epsilon."""
    eps_end: float = 0.05
    """Final exploration epsilon."""
    exploration_fraction: float = 0.5
    """Fraction of training over which epsilon decays linearly."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "tau": Range(0.0, 1.0, low_closed=False),
        "target_period": Range(1.0), "eps_start": UNIT_INTERVAL, "eps_end": UNIT_INTERVAL,
        "exploration_fraction": Range(0.0, 1.0, low_closed=False), "max_grad_norm": POSITIVE,
    }


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array  # the true next observation (the final one on a done step)


class TrainState(NamedTuple):
    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayState
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


def make_env_and_network(config: Config) -> tuple[VecEnv, QNetwork]:
    env = make_env(config.env_id)
    check(env.spec.discrete, "env_id", config.env_id, "DQN needs discrete actions")
    atoms = config.num_atoms if config.distributional else 1
    network = QNetwork(env.spec.obs_shape, env.spec.num_actions, atoms, config.dueling, config.hidden_sizes,
                       config.activation)
    return VecEnv(env, config.num_envs), network


def make_value_head(config: Config) -> tuple[jax.Array | None, Any]:
    """The support points of a classification head, and `to_q(output) -> Q-values [..., A]`."""
    if not config.distributional:
        return None, lambda out: out
    if config.loss == "c51":
        points = dist.make_support(config.v_min, config.v_max, config.num_atoms)
    else:
        points = dist.bin_centres(config.v_min, config.v_max, config.num_atoms)
    return points, lambda logits: dist.expected_value(logits, points)


def td_loss(config: Config, network: QNetwork, params, target_params, sample: replay.NStepSample, hp: HParams):
    """The value loss on an n-step replay sample; returns (loss, mean Q of the taken actions)."""
    points, to_q = make_value_head(config)
    first, next_obs = sample.first, sample.last.next_obs
    out = network.apply(params, first.obs)
    next_target_out = network.apply(target_params, next_obs)
    selector = network.apply(params, next_obs) if config.double else next_target_out
    next_action = jnp.argmax(to_q(selector), axis=-1)
    taken = jnp.take_along_axis(out, first.action.reshape(-1, 1, *([1] * (out.ndim - 2))), axis=1).squeeze(1)
    next_taken = jnp.take_along_axis(next_target_out, next_action.reshape(-1, 1, *([1] * (out.ndim - 2))),
                                     axis=1).squeeze(1)
    next_taken = jax.lax.stop_gradient(next_taken)
    if config.loss == "c51":
        target_values = sample.returns[:, None] + sample.discount[:, None] * points[None, :]
        target = dist.categorical_projection(target_values, jax.nn.softmax(next_taken), points)
        losses = dist.cross_entropy(taken, target)
        q_taken = dist.expected_value(taken, points)
    else:
        y = sample.returns + sample.discount * to_q(next_taken)
        if config.loss == "mse":
            losses, q_taken = 0.5 * jnp.square(taken - y), taken
        elif config.loss == "huber":
            losses, q_taken = optax.huber_loss(taken, y), taken
        else:
            target = (dist.hl_gauss(y, config.v_min, config.v_max, config.num_atoms) if config.loss == "hl_gauss"
                      else dist.two_hot(y, points))
            losses, q_taken = dist.cross_entropy(taken, target), dist.expected_value(taken, points)
    return jnp.mean(sample.weights * losses), jnp.mean(q_taken)


def epsilon(hp: HParams, update_index: jax.Array, num_updates: int) -> jax.Array:
    """Linear decay from eps_start to eps_end over exploration_fraction of the updates."""
    progress = update_index / (hp.exploration_fraction * num_updates)
    return hp.eps_start + (hp.eps_end - hp.eps_start) * jnp.clip(progress, 0.0, 1.0)


def epsilon_greedy(key: jax.Array, q_values: jax.Array, eps, num_actions: int) -> jax.Array:
    """argmax_a Q(s, a) with probability 1 - eps, else a uniformly random action."""
    greedy_action = jnp.argmax(q_values, axis=-1)
    explore_key, action_key = jax.random.split(key)
    random_action = jax.random.randint(action_key, greedy_action.shape, 0, num_actions)
    return jnp.where(jax.random.uniform(explore_key, greedy_action.shape) < eps, random_action, greedy_action)


def polyak(target, online, tau):
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def make_train(config: Config) -> Trainer:
    vec_env, network = make_env_and_network(config)
    _, to_q = make_value_head(config)
    num_updates = config.num_updates
    capacity = config.buffer_size // config.num_envs
    learning_starts_updates = config.learning_starts // config.steps_per_update

    def make_optimizer(hp: HParams) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.lr))

    def init(key: jax.Array, hp: HParams) -> TrainState:
        key, net_key, env_key = jax.random.split(key, 3)
        env_state, obs = vec_env.reset(env_key)
        params = network.init(net_key, obs)
        example = Transition(obs[0], jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros((), bool),
                             jnp.zeros((), bool), obs[0])
        buffer = replay.init(example, capacity, config.num_envs)
        return TrainState(params, params, make_optimizer(hp).init(params), buffer, env_state, obs, key,
                          jnp.zeros((), jnp.int32))

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool, eps=0.0) -> jax.Array:
        """Epsilon-greedy on Q(obs, .); greedy when evaluating."""
        q_values = to_q(network.apply(state.params, obs))
        return jnp.argmax(q_values, axis=-1) if greedy else epsilon_greedy(key, q_values, eps,
                                                                            vec_env.spec.num_actions)

    def env_step(carry, key: jax.Array):
        state, eps = carry
        act_key, env_key = jax.random.split(key)
        action = act(state, act_key, state.obs, False, eps)
        env_state, ts = vec_env.step(env_key, state.env_state, action)
        transition = Transition(state.obs, action, ts.reward, ts.terminated, ts.truncated, ts.final_obs)
        state = state._replace(env_state=env_state, obs=ts.obs, buffer=replay.add(state.buffer, transition))
        return (state, eps), None

    def learn(state: TrainState, key: jax.Array, hp: HParams):
        sample = replay.sample_n_step(state.buffer, key, config.batch_size, config.n_step, hp.gamma)
        (loss, q_mean), grads = jax.value_and_grad(
            lambda p: td_loss(config, network, p, state.target_params, sample, hp), has_aux=True)(state.params)
        updates, opt_state = make_optimizer(hp).update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state, loss, q_mean

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        key, rollout_key, learn_key = jax.random.split(state.key, 3)
        eps = epsilon(hp, state.update_index, num_updates)
        (state, _), _ = jax.lax.scan(env_step, (state, eps), jax.random.split(rollout_key, config.train_every))

        params, opt_state, loss, q_mean = learn(state, learn_key, hp)
        learning = state.update_index >= learning_starts_updates
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(learning, n, o), new, old)  # noqa: E731
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        update_index = state.update_index + 1
        refresh = learning & (update_index % jnp.asarray(hp.target_period).astype(jnp.int32) == 0)
        target_params = jax.tree.map(lambda new, old: jnp.where(refresh, new, old),
                                     polyak(state.target_params, params, hp.tau), state.target_params)
        metrics = {
            "env_steps": update_index * config.steps_per_update,
            "episode_return": mean_last_episode_return(state.env_state),
            "episode_length": mean_last_episode_length(state.env_state),
            "loss": loss,
            "q_mean": q_mean,
            "epsilon": eps,
        }
        state = state._replace(params=params, target_params=target_params, opt_state=opt_state, key=key,
                               update_index=update_index)
        return state, metrics

    def act_for_evaluation(state, key, obs, greedy):
        return act(state, key, obs, True) if greedy else act(state, key, obs, False, 0.05)

    return Trainer(init, update, num_updates, config.steps_per_update, act_for_evaluation, vec_env.env)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("dqn", Config, HParams, make_train)


if __name__ == "__main__":
    main()
