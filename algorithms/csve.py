"""Conservative State Value Estimation (CSVE; Chen, Zhang, Wang, Wang & Cheng, NeurIPS 2023, arXiv 2302.06884).

    python -m rlzoo.experiments.offline_datasets --env-id Pendulum-v1 --out datasets  # datasets/Pendulum-v1/*.hdf5
    python algorithms/csve.py --dataset datasets/Pendulum-v1/medium.hdf5
    python algorithms/csve.py --num-seeds 4 --sweep gap-coef=1,5 gap-threshold=5,10

CSVE penalises the state value V on out-of-distribution *states*, which a learned dynamics model proposes,
rather than Q on out-of-distribution actions (CQL). The conservative V is the paper's central object: its
expectation over the OOD state distribution d is pushed down relative to the data (section 4, "conservative
state value estimation"), which makes E_{s~D}[V(s)] a lower bound of the policy's true value in expectation.

Training has two phases, both inside the compiled program:

0. In `init`: fit a probabilistic dynamics ensemble to the dataset (`rlzoo.dynamics.fit`: Gaussian over
   (s' - s, r), held-out early stopping, one jitted `lax.while_loop`). Its parameters then sit in the
   learner state, frozen, and are checkpointed with it. With `--model-seed` all seeds and sweep members
   share one ensemble, fitted once.

Then per gradient step, on a uniform minibatch (s, a, r, s') from the dataset (the steps of the authors'
code, as summarised in the project's algorithm notes):

1. OOD states s_ood = clip(P_hat_k(s, mean pi(s)), -state_clip, state_clip) from one ensemble member k drawn
   at random per transition, without gradient.
2. Lagrange multiplier alpha = clip(exp(log_alpha), 0, 1e6): L_alpha = -alpha (c gap - tau_th), where
   gap = E[V(s_ood)] - E[V(s')]; alpha grows while c gap exceeds tau_th.
3. V: L_V = E[(min_j Q_bar_j(s, a~) - V(s))^2] + alpha (c gap - tau_th), a~ ~ pi(.|s).
4. Twin Q: L_Q = sum_j E[(r + gamma (1 - term) V(s') - Q_j(s, a))^2] (V has no target network).
5. Actor: L_pi = -b E[min(exp(beta (min_j Q_bar_j(s, a) - V(s))), w_max) log pi(a|s)] - lambda E[V(P_hat(s, a~))]:
   advantage-weighted regression on the data plus a model-based exploration term whose gradient flows
   through the reparameterised sample a~ ~ pi(.|s) and the model into V.
6. Target critics: Polyak averaging with `tau`.

The policy is `rlzoo.networks.GaussianActor` (tanh-bounded mean, state-independent log-std in [-5, 2]).
Defaults are the authors': lr 3e-4, batch 256, gamma 0.99, beta 3, w_max 100, lambda 1, b 1, c 5, alpha
initial 10 with lr 1e-4, tau_th 10, tau 0.005; ensemble of 5 members of 4 x 200 swish units. The paper's
D4RL scores are not reproduced here.

The training loop and what the run folder's metrics mean are every offline
algorithm's: see `rlzoo.offline` (`env_steps` counts gradient steps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import datasets, dynamics
from rlzoo.trainer import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Range, Trainer, check
from rlzoo.networks import EnsembleQ, GaussianActor, StateValue
from rlzoo.offline import OfflineConfig, OfflineData, load_offline_data, make_trainer
from rlzoo.updates import optimizer_step, polyak

ALPHA_MAX = 1e6


@dataclasses.dataclass(frozen=True)
class Config(OfflineConfig):
    """The shared offline settings plus CSVE's actor schedule and dynamics ensemble."""

    cosine_actor_lr: bool = False
    """Decay the policy's learning rate to 0 over total_updates with a cosine schedule (as IQL's reference code)."""
    model_members: int = 5
    """Members of the dynamics ensemble."""
    model_hidden_sizes: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden layer sizes of each dynamics member (swish)."""
    model_max_epochs: int = 100
    """Most epochs of dynamics training (it stops earlier when the held-out error stops improving)."""
    model_steps_per_epoch: int = 1_000
    """Most gradient steps per dynamics epoch."""
    model_seed: int | None = None
    """None: each seed and sweep member fits its own dynamics ensemble. An int: every member shares one
    ensemble fitted from this seed; under `vmap` the fit then runs once instead of once per member."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("model_members", "model_max_epochs", "model_steps_per_epoch"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(all(h >= 1 for h in self.model_hidden_sizes), "model_hidden_sizes", self.model_hidden_sizes,
              "sizes must be >= 1")

    @property
    def dynamics(self) -> dynamics.DynamicsConfig:
        return dynamics.DynamicsConfig(num_members=self.model_members, hidden_sizes=self.model_hidden_sizes,
                                       max_epochs=self.model_max_epochs,
                                       max_steps_per_epoch=self.model_steps_per_epoch)


@struct.dataclass
class HParams:
    """Traced numbers: `vmap` sweeps over any of them in one compiled program."""

    lr: float = 3e-4
    """Adam learning rate of the policy, V and Q."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights."""
    max_weight: float = 100.0
    """Clip w_max of the advantage weights exp(beta * A)."""
    bc_coef: float = 1.0
    """b: weight of the advantage-weighted regression term of the actor loss."""
    explore_coef: float = 1.0
    """lambda: weight of the model-based exploration term -E[V(P_hat(s, a~))] of the actor loss."""
    gap_coef: float = 5.0
    """c: scale of the value gap E[V(s_ood)] - E[V(s')] in the penalty."""
    gap_threshold: float = 10.0
    """tau_th: the scaled gap the Lagrange multiplier allows."""
    init_alpha: float = 10.0
    """Initial Lagrange multiplier alpha."""
    alpha_lr: float = 1e-4
    """Adam learning rate of log(alpha)."""
    state_clip: float = 10.0
    """Model-sampled states are clipped to [-state_clip, state_clip]."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "gamma": UNIT_INTERVAL, "tau": Range(0.0, 1.0, low_closed=False), "beta": NON_NEGATIVE,
        "max_weight": POSITIVE, "bc_coef": NON_NEGATIVE, "explore_coef": NON_NEGATIVE, "gap_coef": NON_NEGATIVE,
        "gap_threshold": NON_NEGATIVE, "init_alpha": POSITIVE, "alpha_lr": POSITIVE, "state_clip": POSITIVE,
    }


class Learner(NamedTuple):
    actor_params: Any
    value_params: Any
    critic_params: Any
    target_critic_params: Any
    log_alpha: jax.Array
    model_params: dynamics.DynamicsParams  # fitted in init, then frozen
    actor_opt_state: Any
    value_opt_state: Any
    critic_opt_state: Any
    alpha_opt_state: Any


class Networks(NamedTuple):
    actor: GaussianActor
    value: StateValue
    critic: EnsembleQ
    bounds: tuple[float, float]

    def sample_action(self, actor_params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        """a~ ~ pi(.|s), reparameterised, clipped to the action bounds."""
        return jnp.clip(self.actor.apply(actor_params, obs).sample(seed=key), *self.bounds)


def ood_states(nets: Networks, learner: Learner, obs: jax.Array, key: jax.Array, hp: HParams) -> jax.Array:
    """Step 1: s_ood = clip(P_hat_k(s, mean pi(s)), -state_clip, state_clip), without gradient."""
    action = nets.actor.apply(learner.actor_params, obs).mean()
    next_obs, _ = dynamics.sample_next(learner.model_params, key, obs, action)
    return jax.lax.stop_gradient(jnp.clip(next_obs, -hp.state_clip, hp.state_clip))


def value_gap(nets: Networks, value_params: Any, ood_obs: jax.Array, next_obs: jax.Array) -> jax.Array:
    """gap = E[V(s_ood)] - E[V(s')]: how much higher V is on model-proposed states than on the data's."""
    return nets.value.apply(value_params, ood_obs).mean() - nets.value.apply(value_params, next_obs).mean()


def alpha_of(log_alpha: jax.Array) -> jax.Array:
    return jnp.clip(jnp.exp(log_alpha), 0.0, ALPHA_MAX)


def alpha_loss(log_alpha: jax.Array, gap: jax.Array, hp: HParams) -> jax.Array:
    """Step 2: L_alpha = -alpha (c gap - tau_th), gap without gradient."""
    return -alpha_of(log_alpha) * (hp.gap_coef * jax.lax.stop_gradient(gap) - hp.gap_threshold)


def value_loss(nets: Networks, value_params: Any, learner: Learner, batch: datasets.Dataset, ood_obs: jax.Array,
               key: jax.Array, hp: HParams):
    """Step 3: E[(min_j Q_bar_j(s, a~) - V(s))^2] + alpha (c gap - tau_th), a~ ~ pi(.|s); alpha without gradient."""
    action = nets.sample_action(learner.actor_params, batch.observations, key)
    target = nets.critic.apply(learner.target_critic_params, batch.observations, action).min(axis=0)
    v = nets.value.apply(value_params, batch.observations)
    chex.assert_equal_shape((v, target))
    regression = jnp.square(jax.lax.stop_gradient(target) - v).mean()
    gap = value_gap(nets, value_params, ood_obs, batch.next_observations)
    penalty = jax.lax.stop_gradient(alpha_of(learner.log_alpha)) * (hp.gap_coef * gap - hp.gap_threshold)
    return regression + penalty, {"value_loss": regression, "value_penalty": penalty, "value_gap": gap,
                                  "v_mean": v.mean()}


def critic_loss(nets: Networks, critic_params: Any, value_params: Any, batch: datasets.Dataset, hp: HParams):
    """Step 4: sum_j E[(r + gamma (1 - term) V(s') - Q_j(s, a))^2]."""
    next_v = nets.value.apply(value_params, batch.next_observations)
    target = jax.lax.stop_gradient(batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_v)
    q = nets.critic.apply(critic_params, batch.observations, batch.actions)
    loss = jnp.square(q - target[None]).mean(axis=1).sum()
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(nets: Networks, actor_params: Any, learner: Learner, value_params: Any, batch: datasets.Dataset,
               key: jax.Array, hp: HParams):
    """Step 5: -b E[min(exp(beta A(s, a)), w_max) log pi(a|s)] - lambda E[V(P_hat(s, a~))], a~ ~ pi(.|s).

    A(s, a) = min_j Q_bar_j(s, a) - V(s) on the data's actions, without gradient; the exploration term's
    gradient reaches the actor through a~ (reparameterised) and the model, with V and the model frozen.
    """
    action_key, model_key = jax.random.split(key)
    q = nets.critic.apply(learner.target_critic_params, batch.observations, batch.actions).min(axis=0)
    v = nets.value.apply(value_params, batch.observations)
    weights = jax.lax.stop_gradient(jnp.minimum(jnp.exp(hp.beta * (q - v)), hp.max_weight))
    log_prob = nets.actor.apply(actor_params, batch.observations).log_prob(batch.actions)
    regression = -(weights * log_prob).mean()
    action = nets.sample_action(actor_params, batch.observations, action_key)
    model_obs, _ = dynamics.sample_next(learner.model_params, model_key, batch.observations, action)
    exploration = -nets.value.apply(value_params, jnp.clip(model_obs, -hp.state_clip, hp.state_clip)).mean()
    loss = hp.bc_coef * regression + hp.explore_coef * exploration
    return loss, {"actor_loss": loss, "awr_loss": regression, "exploration_loss": exploration,
                  "weight_mean": weights.mean()}


def make_train(config: Config, data: OfflineData | None = None) -> Trainer:
    """`data` defaults to `load_offline_data(config.dataset, config.env_id, config.normalize_obs)`."""
    data = data or load_offline_data(config.dataset, config.env_id, config.normalize_obs)
    nets = Networks(GaussianActor(data.action_dim, *data.action_bounds, config.hidden_sizes, config.activation),
                    StateValue(config.hidden_sizes, config.activation),
                    EnsembleQ(2, config.hidden_sizes, config.activation), data.action_bounds)
    dynamics_config = config.dynamics

    def actor_optimizer(hp: HParams) -> optax.GradientTransformation:
        return optax.adam(optax.cosine_decay_schedule(hp.lr, config.total_updates) if config.cosine_actor_lr
                          else hp.lr)

    def init(key: jax.Array, hp: HParams, dataset: datasets.Dataset) -> Learner:
        """Step 0, the dynamics fit, then the networks and optimisers."""
        model_key, actor_key, value_key, critic_key = jax.random.split(key, 4)
        if config.model_seed is not None:  # unbatched key and data: vmap leaves the fit unbatched
            model_key = jax.random.PRNGKey(config.model_seed)
        model_params, _ = dynamics.fit(model_key, dataset, dynamics_config)
        obs, action = dataset.observations[:1], dataset.actions[:1]
        actor_params = nets.actor.init(actor_key, obs)
        value_params = nets.value.init(value_key, obs)
        critic_params = nets.critic.init(critic_key, obs, action)
        log_alpha = jnp.log(jnp.asarray(hp.init_alpha, jnp.float32))
        opt = optax.adam(hp.lr)
        return Learner(actor_params, value_params, critic_params, critic_params, log_alpha, model_params,
                       actor_optimizer(hp).init(actor_params), opt.init(value_params), opt.init(critic_params),
                       optax.adam(hp.alpha_lr).init(log_alpha))

    def learn(learner: Learner, batch: datasets.Dataset, key: jax.Array, hp: HParams) -> tuple[Learner, dict]:
        ood_key, value_key, actor_key = jax.random.split(key, 3)
        opt = optax.adam(hp.lr)

        ood_obs = ood_states(nets, learner, batch.observations, ood_key, hp)  # 1
        gap = value_gap(nets, learner.value_params, ood_obs, batch.next_observations)
        log_alpha, alpha_opt_state, _ = optimizer_step(  # 2
            optax.adam(hp.alpha_lr), lambda p: (alpha_loss(p, gap, hp), {}), learner.log_alpha,
            learner.alpha_opt_state)
        value_params, value_opt_state, (_, value_stats) = optimizer_step(  # 3
            opt, lambda p: value_loss(nets, p, learner, batch, ood_obs, value_key, hp), learner.value_params,
            learner.value_opt_state)
        critic_params, critic_opt_state, (_, critic_stats) = optimizer_step(  # 4
            opt, lambda p: critic_loss(nets, p, value_params, batch, hp), learner.critic_params,
            learner.critic_opt_state)
        actor_params, actor_opt_state, (_, actor_stats) = optimizer_step(  # 5
            actor_optimizer(hp), lambda p: actor_loss(nets, p, learner, value_params, batch, actor_key, hp),
            learner.actor_params, learner.actor_opt_state)
        target_critic_params = polyak(learner.target_critic_params, critic_params, hp.tau)  # 6
        learner = Learner(actor_params, value_params, critic_params, target_critic_params, log_alpha,
                          learner.model_params, actor_opt_state, value_opt_state, critic_opt_state, alpha_opt_state)
        return learner, {**value_stats, **critic_stats, **actor_stats, "alpha": alpha_of(log_alpha)}

    def policy(learner: Learner, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        dist = nets.actor.apply(learner.actor_params, obs)
        return dist.mean() if greedy else dist.sample(seed=key)

    return make_trainer(config, data, init, learn, policy)


def state_values(config: Config, learner: Learner, obs: jax.Array) -> jax.Array:
    """V(s) of a trained learner on (already normalised) observations [N, ...] -> [N]."""
    return StateValue(config.hidden_sizes, config.activation).apply(learner.value_params, obs)


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("csve", Config, HParams, make_train)


if __name__ == "__main__":
    main()
