"""TD(lambda) policy evaluation: tabular, linear and neural value functions of a fixed policy.

    python algorithms/td.py                                    # neural TD(0), CartPole-v1, pole-angle policy
    python algorithms/td.py --env-id RandomWalk19-v0 --value-fn tabular --view backward --trace dutch \
        --policy random --gamma 1 --lam 0.5 --lr 0.05      # true online TD(lambda); `value_error` is its RMS error
    python algorithms/td.py --policy checkpoint --policy-run runs/CartPole-v1__dqn__0__...   # a trained agent
    python algorithms/td.py --num-aux-tasks 16 --aux-coef 1.0  # plus the values of 16 random reward functions

Nothing here acts to maximise reward: the policy is fixed (uniform random, "push
toward the pole's lean" on CartPole, or the greedy policy of a PPO/DQN run
folder) and V learns its values (Sutton & Barto, 2nd ed., ch. 12; equation
numbers below are theirs). Per update, `num_envs` environments take `num_steps`
steps each. The *forward view* regresses V(s_t) on the lambda-return
G^lam_t = r_t + gamma_t[(1 - lam) V(s_{t+1}) + lam G^lam_{t+1}] (eq. 12.2, cut at
the end of the rollout: the truncated lambda-return of section 12.3), with
`num_epochs` full-batch semi-gradient steps (SGD for tabular/linear V, Adam for
a neural V). The *backward view* (tabular/linear only) updates online after
every step with an eligibility trace per environment: accumulating (eq. 12.5-12.7)
or dutch, i.e. true online TD(lambda) (eq. 12.11), which for linear V equals
the online lambda-return algorithm exactly (van Seijen & Sutton, 2014).
Termination stops the bootstrap; truncation bootstraps from V(final_obs).

Auxiliary tasks (`num_aux_tasks` N > 0, neural V): the network has N more value
heads, each learning the value of a fixed random reward function
r_i(s') = tanh(p_i . s'), which shapes the shared representation (Lyle et al.,
2021, "On the Effect of Auxiliary Tasks on Representation Dynamics").

Sutton & Barto's Fig. 12.3 (the offline lambda-return algorithm on the 19-state
random walk, every alpha x lambda x run in one `jax.jit(vmap(...))` program) is
`python -m rlzoo.experiments.random_walk_td`; that module also holds the offline
(episode-at-a-time) algorithms it compares with the online steps here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.env_adapter import EnvSpec, VecEnv, VecEnvState, episode_metrics
from rlzoo.envs import make_env
from rlzoo.networks import ACTIVATIONS, MLP, orthogonal_dense
from rlzoo.returns import discounted_returns, lambda_returns

VALUE_FNS, VIEWS, TRACES, POLICIES = ("tabular", "linear", "neural"), ("forward", "backward"), (
    "accumulating", "dutch"), ("random", "pole-angle", "checkpoint")


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings: they fix shapes and the compiled program (the CLI)."""

    env_id: str = "CartPole-v1"
    """Environment id: a gymnax id or an rlzoo id (tabular V needs one-hot observations: RandomWalk19-v0)."""
    total_timesteps: int = 100_000
    """Environment steps over all envs."""
    num_envs: int = 8
    """Parallel environments per seed."""
    num_steps: int = 32
    """Steps per environment per update (the rollout the lambda-returns are cut at)."""
    value_fn: Literal["tabular", "linear", "neural"] = "neural"
    """Value function: a table (one-hot observations), linear in [obs, 1], or an MLP."""
    view: Literal["forward", "backward"] = "forward"
    """forward: regress on lambda-returns; backward: online updates with eligibility traces (tabular/linear)."""
    trace: Literal["accumulating", "dutch"] = "dutch"
    """Eligibility trace of the backward view: accumulating TD(lambda) or dutch (true online TD(lambda))."""
    num_epochs: int = 8
    """Full-batch gradient steps per rollout (forward view)."""
    policy: Literal["random", "pole-angle", "checkpoint"] = "pole-angle"
    """Fixed policy: uniform random, push toward the pole's lean (CartPole), or a run folder's greedy policy."""
    policy_run: str = ""
    """Run folder of a PPO or DQN run whose newest checkpoint gives the policy (with --policy checkpoint)."""
    num_aux_tasks: int = 0
    """Auxiliary value heads for random reward functions (neural V only; 0: none)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the neural V."""
    activation: str = "relu"
    """Hidden activation of the neural V."""
    anneal_lr: bool = True
    """Decay the step size linearly to 0 over training."""

    def __post_init__(self):
        check(self.total_timesteps > 0, "total_timesteps", self.total_timesteps, "must be > 0")
        for name in ("num_envs", "num_steps", "num_epochs"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.total_timesteps >= self.num_envs * self.num_steps, "total_timesteps", self.total_timesteps,
              f"must be >= num_envs * num_steps = {self.num_envs * self.num_steps} (one rollout)")
        check(self.value_fn in VALUE_FNS, "value_fn", self.value_fn, f"one of {', '.join(VALUE_FNS)}")
        check(self.view in VIEWS, "view", self.view, f"one of {', '.join(VIEWS)}")
        check(self.trace in TRACES, "trace", self.trace, f"one of {', '.join(TRACES)}")
        check(self.policy in POLICIES, "policy", self.policy, f"one of {', '.join(POLICIES)}")
        check(self.view == "forward" or self.value_fn != "neural", "view", self.view,
              "the backward view (eligibility traces) needs a tabular or linear value_fn")
        check(self.num_aux_tasks >= 0, "num_aux_tasks", self.num_aux_tasks, "must be >= 0")
        check(self.num_aux_tasks == 0 or self.value_fn == "neural", "num_aux_tasks", self.num_aux_tasks,
              "auxiliary heads need value_fn='neural' (they shape a learned representation)")
        check((self.policy == "checkpoint") == bool(self.policy_run), "policy_run", self.policy_run,
              "give a run folder exactly when --policy checkpoint")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 3e-3
    """Step size alpha (SGD for tabular/linear V, Adam for neural V)."""
    gamma: float = 0.99
    """Discount factor."""
    lam: float = 0.0
    """lambda of TD(lambda): 0 is TD(0), 1 is Monte Carlo."""
    aux_coef: float = 1.0
    """Weight of the auxiliary value losses."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip (neural V)."""

    BOUNDS: ClassVar[dict[str, Range]] = {"lr": POSITIVE, "gamma": UNIT_INTERVAL, "lam": UNIT_INTERVAL,
                                          "aux_coef": NON_NEGATIVE, "max_grad_norm": POSITIVE}


# --------------------------------------------------------------------------- linear TD(lambda), one step


def accumulating_td_step(w, trace, x, reward, next_x, terminated, alpha, gamma, lam):
    """Semi-gradient TD(lambda) with an accumulating trace (eq. 12.5-12.7); returns (w, trace, delta).

    z <- gamma lam z + x;  delta = r + gamma (1 - term) w.x' - w.x;  w <- w + alpha delta z.
    """
    chex.assert_equal_shape([w, x, next_x, trace])
    trace = gamma * lam * trace + x
    delta = reward + gamma * (1.0 - jnp.asarray(terminated, w.dtype)) * jnp.dot(w, next_x) - jnp.dot(w, x)
    return w + alpha * delta * trace, trace, delta


def true_online_td_step(w, trace, v_old, x, reward, next_x, terminated, alpha, gamma, lam):
    """True online TD(lambda) with a dutch trace (eq. 12.11 and 12.12); returns (w, trace, v_old, delta).

    z <- gamma lam z + (1 - alpha gamma lam z.x) x;
    w <- w + alpha (delta + v - v_old) z - alpha (v - v_old) x;  v_old <- v'.
    """
    chex.assert_equal_shape([w, x, next_x, trace])
    v, next_v = jnp.dot(w, x), (1.0 - jnp.asarray(terminated, w.dtype)) * jnp.dot(w, next_x)
    delta = reward + gamma * next_v - v
    trace = gamma * lam * trace + (1.0 - alpha * gamma * lam * jnp.dot(trace, x)) * x
    w = w + alpha * (delta + v - v_old) * trace - alpha * (v - v_old) * x
    return w, trace, next_v, delta


# --------------------------------------------------------------------------- value functions and policies


class ValueNetwork(nn.Module):
    """V(s) and N auxiliary values from one MLP torso: [..., 1 + N]."""

    num_heads: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return orthogonal_dense(self.num_heads, gain=1.0)(MLP(self.hidden_sizes, self.activation)(features))


class ValueFunction(NamedTuple):
    init: Callable[[jax.Array], Any]  # key -> params
    apply: Callable[[Any, jax.Array], jax.Array]  # (params, obs [..., *obs_shape]) -> values [..., 1 + N]
    features: Callable[[jax.Array], jax.Array]  # obs -> the input of V: flat obs, with a bias for linear V


def make_value_function(config: Config, spec: EnvSpec) -> ValueFunction:
    """Tabular (one-hot observations, a weight per state), linear in [obs, 1], or an MLP with 1 + N heads."""
    obs_dim = math.prod(spec.obs_shape)

    def features(obs: jax.Array) -> jax.Array:
        flat = obs.reshape(*obs.shape[:obs.ndim - len(spec.obs_shape)], obs_dim).astype(jnp.float32)
        return jnp.concatenate([flat, jnp.ones_like(flat[..., :1])], -1) if config.value_fn == "linear" else flat

    if config.value_fn != "neural":
        size = obs_dim + (config.value_fn == "linear")
        return ValueFunction(lambda key: jnp.zeros(size), lambda w, obs: (features(obs) @ w)[..., None], features)
    network = ValueNetwork(1 + config.num_aux_tasks, config.hidden_sizes, config.activation)
    return ValueFunction(lambda key: network.init(key, jnp.zeros(obs_dim)),
                         lambda params, obs: network.apply(params, features(obs)), features)


def aux_rewards(num_tasks: int, spec: EnvSpec) -> Callable[[jax.Array], jax.Array]:
    """N random reward functions r_i(s') = tanh(p_i . s'), p_i ~ N(0, I / dim), drawn once (the same for every seed)."""
    obs_dim = math.prod(spec.obs_shape)
    projection = jax.random.normal(jax.random.PRNGKey(20210407), (obs_dim, num_tasks)) / jnp.sqrt(obs_dim)
    return lambda next_obs: jnp.tanh(next_obs.reshape(*next_obs.shape[:-len(spec.obs_shape)], obs_dim) @ projection)


def load_policy(run_dir: str, env_id: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The greedy policy of the newest checkpoint of a PPO or DQN run folder, as act(key, obs)."""
    import importlib
    import json
    from pathlib import Path

    from rlzoo.runner import CONFIG_FILE, load_run

    path = Path(run_dir) / CONFIG_FILE
    check(path.exists(), "policy_run", run_dir, f"must be a run folder (no {CONFIG_FILE} there)")
    algo = json.loads(path.read_text())["algo"]
    check(algo in ("ppo", "dqn"), "policy_run", run_dir, f"must be a ppo or dqn run (it is a {algo} run)")
    module = importlib.import_module(f"rlzoo.algorithms.{algo}")
    run = load_run(run_dir, module.make_train, module.Config, module.HParams)
    check(run.config.env_id == env_id, "policy_run", run_dir, f"was trained on {run.config.env_id}, not {env_id}")
    state = jax.tree.map(lambda x: jnp.asarray(x[0]), run.state)  # the first seed of the first configuration
    return lambda key, obs: run.trainer.act(state, key, obs, True)


def make_policy(config: Config, spec: EnvSpec) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The fixed policy being evaluated, act(key, obs [B, ...]) -> actions [B, ...]."""
    if config.policy == "checkpoint":
        return load_policy(config.policy_run, config.env_id)
    if config.policy == "pole-angle":
        check(config.env_id == "CartPole-v1", "policy", config.policy, "pole-angle needs env_id CartPole-v1")
        return lambda key, obs: (obs[..., 2] > 0).astype(jnp.int32)  # push right while the pole leans right

    def uniform(key: jax.Array, obs: jax.Array) -> jax.Array:
        batch = obs.shape[:obs.ndim - len(spec.obs_shape)]
        if spec.discrete:
            return jax.random.randint(key, batch, 0, spec.num_actions)
        return jax.random.uniform(key, (*batch, *spec.action_shape), minval=spec.action_low, maxval=spec.action_high)

    return uniform


# --------------------------------------------------------------------------- training


class Transition(NamedTuple):
    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array  # the true next observation (the final one on a done step)


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    trace: jax.Array  # [num_envs, features] eligibility traces (backward view; unused otherwise)
    v_old: jax.Array  # [num_envs] V(s') of the previous step (true online TD(lambda))
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update_index: jax.Array


def make_rollout_step(vec_env: VecEnv, policy: Callable) -> Callable:
    """One vectorised step of the fixed policy, as a `lax.scan` body over ((env_state, obs), key)."""
    def rollout_step(carry, key: jax.Array):
        env_state, obs = carry
        act_key, env_key = jax.random.split(key)
        env_state, ts = vec_env.step(env_key, env_state, policy(act_key, obs))
        return (env_state, ts.obs), Transition(obs, ts.reward, ts.terminated, ts.truncated, ts.final_obs)

    return rollout_step


def finished_in_rollout(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """True at steps whose episode terminates inside the rollout, so their Monte Carlo return is complete."""
    def step(complete_next, flags):
        term, trunc = flags
        complete = term | (~trunc & complete_next)
        return complete, complete

    return jax.lax.scan(step, jnp.zeros_like(terminated[0]), (terminated, truncated), reverse=True)[1]


def relative_value_error(values: jax.Array, batch: Transition, gamma) -> jax.Array:
    """sum |V(s_t) - G_t| / sum |G_t| over the steps of episodes that finished in the rollout (NaN if none)."""
    chex.assert_equal_shape([values, batch.reward])
    returns = discounted_returns(batch.reward, batch.terminated, batch.truncated, gamma)
    mask = finished_in_rollout(batch.terminated, batch.truncated)
    return jnp.sum(mask * jnp.abs(values - returns)) / jnp.sum(mask * jnp.abs(returns))


def make_train(config: Config) -> Trainer:
    env = make_env(config.env_id)
    spec = env.spec
    if config.value_fn == "tabular":
        check(hasattr(env.env, "num_states"), "value_fn", config.value_fn,
              f"tabular V needs one-hot observations (e.g. RandomWalk19-v0), not {config.env_id}")
    vec_env = VecEnv(env, config.num_envs)
    policy, value = make_policy(config, spec), make_value_function(config, spec)
    cumulants = aux_rewards(config.num_aux_tasks, spec)
    num_updates = config.num_updates
    true_values = getattr(env.env, "true_values", None)
    optimizer = optax.identity() if config.value_fn != "neural" else optax.scale_by_adam()

    def step_size(hp: HParams, update_index: jax.Array) -> jax.Array:
        return hp.lr * (1.0 - update_index / num_updates) if config.anneal_lr else hp.lr

    def init(key: jax.Array, hp: HParams) -> TrainState:
        key, net_key, env_key = jax.random.split(key, 3)
        env_state, obs = vec_env.reset(env_key)
        params = value.init(net_key)
        trace = jnp.zeros((config.num_envs, params.shape[0] if config.value_fn != "neural" else 1))
        return TrainState(params, optimizer.init(params), trace, jnp.zeros(config.num_envs), env_state, obs, key,
                          jnp.zeros((), jnp.int32))

    rollout_step = make_rollout_step(vec_env, policy)

    def forward_update(state: TrainState, hp: HParams, alpha) -> tuple[TrainState, Transition, jax.Array]:
        """Collect a rollout, then `num_epochs` semi-gradient steps towards its lambda-returns (eq. 12.4)."""
        key, rollout_key = jax.random.split(state.key)
        (env_state, obs), batch = jax.lax.scan(rollout_step, (state.env_state, state.obs),
                                               jax.random.split(rollout_key, config.num_steps))
        rewards = jnp.concatenate([batch.reward[..., None], cumulants(batch.next_obs)], -1)  # [T, E, 1 + N]
        flags = [jnp.broadcast_to(f[..., None], rewards.shape) for f in (batch.terminated, batch.truncated)]
        next_values = jax.lax.stop_gradient(value.apply(state.params, batch.next_obs))
        targets = lambda_returns(rewards, next_values, *flags, hp.gamma, hp.lam)

        def loss_fn(params):
            errors = 0.5 * jnp.square(value.apply(params, batch.obs) - targets)
            aux = errors[..., 1:].mean() if config.num_aux_tasks else jnp.zeros(())
            return errors[..., 0].mean() + hp.aux_coef * aux, aux

        def epoch(carry, _):
            params, opt_state = carry
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            if config.value_fn == "neural":
                grads = optax.clip_by_global_norm(hp.max_grad_norm).update(grads, optax.EmptyState())[0]
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (jax.tree.map(lambda p, u: p - alpha * u, params, updates), opt_state), (loss, aux)

        (params, opt_state), (loss, aux) = jax.lax.scan(epoch, (state.params, state.opt_state), None,
                                                        length=config.num_epochs)
        state = state._replace(params=params, opt_state=opt_state, env_state=env_state, obs=obs, key=key)
        return state, batch, {"value_loss": loss.mean(), "aux_loss": aux.mean()}

    def backward_update(state: TrainState, hp: HParams, alpha) -> tuple[TrainState, Transition, jax.Array]:
        """`num_steps` online TD(lambda) updates, one eligibility trace per env; the increments are summed."""
        def step(carry, key: jax.Array):
            w, trace, v_old, env_state, obs = carry
            (env_state, next_obs), t = rollout_step((env_state, obs), key)
            x, next_x = value.features(t.obs), value.features(t.next_obs)
            if config.trace == "dutch":
                new_w, trace, v_old, delta = jax.vmap(true_online_td_step, (None, 0, 0, 0, 0, 0, 0, None, None, None))(
                    w, trace, v_old, x, t.reward, next_x, t.terminated, alpha, hp.gamma, hp.lam)
            else:
                new_w, trace, delta = jax.vmap(accumulating_td_step, (None, 0, 0, 0, 0, 0, None, None, None))(
                    w, trace, x, t.reward, next_x, t.terminated, alpha, hp.gamma, hp.lam)
            continues = 1.0 - (t.terminated | t.truncated)
            carry = (w + jnp.sum(new_w - w, axis=0), trace * continues[:, None], v_old * continues, env_state,
                     next_obs)
            return carry, (t, jnp.square(delta))

        key, rollout_key = jax.random.split(state.key)
        carry = (state.params, state.trace, state.v_old, state.env_state, state.obs)
        (w, trace, v_old, env_state, obs), (batch, squared_errors) = jax.lax.scan(
            step, carry, jax.random.split(rollout_key, config.num_steps))
        state = state._replace(params=w, trace=trace, v_old=v_old, env_state=env_state, obs=obs, key=key)
        return state, batch, {"value_loss": 0.5 * squared_errors.mean(), "aux_loss": jnp.zeros(())}

    def update(state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        alpha = step_size(hp, state.update_index)
        learn = forward_update if config.view == "forward" else backward_update
        state, batch, losses = learn(state, hp, alpha)
        update_index = state.update_index + 1
        metrics = {
            "env_steps": update_index * config.steps_per_update,
            **episode_metrics(state.env_state),  # the behaviour (evaluated) policy's return and length
            "episode_value_error": relative_value_error(value.apply(state.params, batch.obs)[..., 0], batch, hp.gamma),
            **losses,
        }
        if true_values is not None:
            all_states = jnp.eye(env.env.num_states)
            metrics["value_error"] = jnp.sqrt(jnp.mean(jnp.square(value.apply(state.params, all_states)[:, 0]
                                                                  - true_values())))
        return state._replace(update_index=update_index), metrics

    def act(state: TrainState, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """The fixed policy being evaluated (whatever `greedy` says)."""
        return policy(key, obs)

    return Trainer(init, update, num_updates, config.steps_per_update, act, vec_env.env)


def fresh_episodes(config: Config, key: jax.Array, num_envs: int = 64, num_steps: int = 500) -> Transition:
    """`num_steps` steps of the fixed policy on `num_envs` new environments (held-out data), time-major."""
    vec_env = VecEnv(make_env(config.env_id), num_envs)
    reset_key, run_key = jax.random.split(key)
    env_state, obs = vec_env.reset(reset_key)
    rollout_step = make_rollout_step(vec_env, make_policy(config, vec_env.spec))
    return jax.lax.scan(rollout_step, (env_state, obs), jax.random.split(run_key, num_steps))[1]


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("td", Config, HParams, make_train)


if __name__ == "__main__":
    main()
