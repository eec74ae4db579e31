"""i-SAC: Soft Actor-Critic with iterated critics (i-QN applied to SAC; Vincent et al., TMLR 2025, arXiv 2403.02107).

    python algorithms/isac.py                                  # Pendulum-v1, K = 3 critic pairs
    python algorithms/isac.py --num-heads 5 --target-period 10 --roll-period 200

SAC's critic learns one soft Bellman iteration at a time. Here K online critics
Q_1..Q_K learn K consecutive iterations at once: with frozen targets
Q_bar_0..Q_bar_{K-1}, head k regresses on the soft Bellman target of the frozen
head before it (i-QN's eq. 3 with SAC's soft target, Haarnoja et al., 2018):

    L = sum_k E[(r + gamma (1 - term) (min_j Q_bar_{k-1,j}(s', a') - alpha log pi(a'|s')) - Q_{k,j}(s, a))^2] / 2,

with one a' ~ pi(.|s') shared by all heads. Each head is a *pair* of twin critics
(clipped double-Q inside every head, our choice), so the critic parameters carry
leading axes [K, 2] and are evaluated with `vmap`; all K pairs start from SAC's
initial critic pair (our choice, as in `iqn.py`, so that K = 1 is exactly SAC).

Targets follow i-QN's schedule, counted in gradient steps: every D steps
(`target_period`) Q_bar_k <- Q_k for k >= 1; every T steps (`roll_period`, a
multiple of D) the window rolls: Q_bar_0 <- (1 - tau) Q_bar_0 + tau Q_1 and
Q_k <- Q_{k+1}, the last pair keeping its weights. tau = 1 (the default) is i-QN's
hard copy; with K = 1, D = T = 1 and SAC's tau, rolling is SAC's Polyak update, so
i-SAC with one head reproduces SAC from the same seed (tested). Adam's moments stay
with their slot when the window rolls, as in `iqn.py`.

The actor and the temperature follow the last online pair Q_K, the newest
iteration (our choice; i-QN acts with the newest heads as well). Everything else
(networks, acting, replay, temperature) is SAC's; the window of K pairs moves as
i-QN's (`rlzoo.iterated`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import struct

from rlzoo import iterated, off_policy, replay
from rlzoo.algorithms import sac
from rlzoo.envs import make_env
from rlzoo.networks import SquashedGaussianActor, TwinCritic
from rlzoo.off_policy import twin_critic_loss
from rlzoo.trainer import Range, Trainer, check
from rlzoo.updates import is_due, optimizer_step


@dataclasses.dataclass(frozen=True)
class Config(sac.Config):
    """SAC's static settings plus the number K of iterated critic pairs."""

    num_heads: int = 3
    """K: soft Bellman iterations learned at once, each a twin-critic pair (K = 1 is SAC)."""

    def __post_init__(self):
        super().__post_init__()
        check(self.num_heads >= 1, "num_heads", self.num_heads, "K must be >= 1")


@struct.dataclass
class HParams(sac.HParams):
    """SAC's numbers; `target_period` is D, `roll_period` is T, `tau` the step of Q_bar_0 on a roll."""

    tau: float = 1.0
    """Step of Q_bar_0 toward Q_1 on each roll (1: i-QN's hard copy; SAC's 0.005 with K = 1, D = T = 1)."""
    target_period: float = 10.0
    """D: gradient steps between Q_bar_k <- Q_k (k >= 1)."""
    roll_period: float = 100.0
    """T: gradient steps between rolls of the window (a multiple of D)."""

    BOUNDS: ClassVar[dict[str, Range]] = {**sac.HParams.BOUNDS, "target_period": Range(1.0),
                                          "roll_period": Range(1.0)}

    def check_relations(self, label: str = "") -> None:
        check(float(self.roll_period) % float(self.target_period) == 0, f"{label}roll_period", self.roll_period,
              f"T must be a multiple of target_period D={self.target_period}")


def iterated_critic_loss(critic, params, obs: jax.Array, action: jax.Array, targets: jax.Array):
    """Sum over heads k of SAC's twin-critic loss of pair k against the target from frozen pair k-1."""
    losses, q_means = jax.vmap(lambda p, y: twin_critic_loss(critic, p, obs, action, y))(params, targets)
    return jnp.sum(losses), jnp.mean(q_means)


def make_train(config: Config) -> Trainer:
    vec_env = off_policy.make_vec_env(config, make_env)
    actor = SquashedGaussianActor(vec_env.spec.num_actions, config.hidden_sizes, config.activation)
    critic = TwinCritic(config.hidden_sizes, config.activation)
    num_heads = config.num_heads
    last_head = lambda tree: jax.tree.map(lambda x: x[-1], tree)  # noqa: E731

    def init_learner(actor_key: jax.Array, critic_key: jax.Array, obs: jax.Array, hp: HParams) -> sac.Learner:
        """SAC's initial learner with its critic pair copied into all K online and target slots."""
        learner = sac.init_learner(config, actor, critic, actor_key, critic_key, obs, hp)
        critic_params = iterated.stack(learner.critic_params, num_heads)
        return learner._replace(critic_params=critic_params, target_critic_params=critic_params,
                                critic_opt_state=optax.adam(hp.critic_lr).init(critic_params))

    def gradient_step(learner: sac.Learner, buffer: replay.ReplayState, key: jax.Array, hp: HParams):
        """SAC's gradient step with K iterated critic pairs and i-QN's target schedule."""
        sample_key, next_key, actor_key = jax.random.split(key, 3)
        batch, discount = off_policy.sample_batch(config, buffer, sample_key, hp.gamma)
        alpha = jnp.exp(learner.log_alpha)
        next_action, next_log_prob = sac.sample_action(actor, learner.actor_params, batch.next_obs, next_key)
        next_q = jax.vmap(lambda p: critic.apply(p, batch.next_obs, next_action))(learner.target_critic_params)
        targets = jax.vmap(lambda q: sac.soft_q_target(batch.reward, discount, q, next_log_prob, alpha))(next_q)
        critic_params, critic_opt_state, (q_loss, q_mean) = optimizer_step(
            optax.adam(hp.critic_lr), lambda p: iterated_critic_loss(critic, p, batch.obs, batch.action, targets),
            learner.critic_params, learner.critic_opt_state)

        gradient_steps = learner.gradient_steps + 1
        target_params, online_params = iterated.advance(
            learner.target_critic_params, critic_params, is_due(gradient_steps, hp.roll_period),
            is_due(gradient_steps, hp.target_period), lambda t, p: iterated.roll(t, p, hp.tau))
        learner = learner._replace(critic_params=online_params, target_critic_params=target_params,
                                   critic_opt_state=critic_opt_state, gradient_steps=gradient_steps)
        q_fn = lambda obs, action: critic.apply(last_head(critic_params), obs, action)  # noqa: E731
        learner, stats = sac.improve_policy(config, actor, learner, q_fn, batch.obs, actor_key, hp)
        return learner, {"critic_loss": q_loss, "q_mean": q_mean, **stats}

    return off_policy.make_trainer(
        config, vec_env, init_learner,
        explore=lambda learner, key, obs, hp: sac.sample_action(actor, learner.actor_params, obs, key)[0],
        gradient_step=gradient_step,
        act=functools.partial(sac.act, actor))


def main() -> None:
    from rlzoo.runner import run_cli

    run_cli("isac", Config, HParams, make_train)


if __name__ == "__main__":
    main()
