"""Why TD3 collapses on brax/hopper at the benchmark's settings: the actor's tanh saturates at a corner.

    .venv/bin/python benchmarks/diagnose_td3.py --steps 40000

Trains TD3 with the settings of `bench_offpolicy.py` (16 envs, 2 gradient steps
per vectorised step, 5,000 random steps first, 2x256 ReLU) on brax/hopper, one
seed per variant. Variants that differ only in `HParams` run vmapped in one
program; those that change the `Config` run one after another. For each variant
it prints the actor's mean |mu(s)| and the fraction of action components with
|mu(s)| > 0.99 over every observation in the replay buffer (1.0: the policy is
pinned to the bounds), the mean action per dimension, and the training episode
return at ten points of the run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.algorithms import td3
from rlzoo.networks import DeterministicActor

BENCH = dict(env_id="brax/hopper", num_envs=16, utd_ratio=2, learning_starts=5_000, buffer_size=100_000,
             batch_size=256, hidden_sizes=(256, 256), activation="relu")
VARIANTS = {  # label -> (Config overrides, HParams overrides)
    "defaults": ({}, {}),
    "exploration_noise 0.3": ({}, dict(exploration_noise=0.3)),
    "policy_delay 1": ({}, dict(policy_delay=1.0)),
    "critic_lr 1e-3": ({}, dict(critic_lr=1e-3)),
    "actor_lr 3e-5": ({}, dict(actor_lr=3e-5)),
    "learning_starts 10k": (dict(learning_starts=10_000), {}),
    "utd_ratio 8": (dict(utd_ratio=8), {}),
}


def saturation_report(label: str, config: td3.Config, state, metrics) -> None:
    """Prints the actor's saturation over the replay buffer's observations and the return curve."""
    obs = state.buffer.data.obs.reshape(-1, state.buffer.data.obs.shape[-1])[: config.total_timesteps]
    actor = DeterministicActor(state.buffer.data.action.shape[-1], config.hidden_sizes, config.activation)
    mu = actor.apply(state.learner.actor_params, obs)
    returns = np.asarray(metrics["episode_return"])
    points = [float(np.nanmean(chunk)) for chunk in np.array_split(returns, 10)]
    print(f"{label:>24}: |mu| {float(jnp.abs(mu).mean()):.3f}, saturated {float((jnp.abs(mu) > 0.99).mean()):.2f}, "
          f"mean action {np.round(np.asarray(mu.mean(0)), 2).tolist()}, training return "
          f"{np.round(points, 1).tolist()}", flush=True)


def run_group(labels: list[str], steps: int) -> None:
    """The variants in `labels` share one Config: one vmapped program over their HParams."""
    config = td3.Config(total_timesteps=steps, **{**BENCH, **VARIANTS[labels[0]][0]})
    trainer = td3.make_train(config)
    hps = [td3.HParams(**VARIANTS[label][1]) for label in labels]
    init = jax.jit(trainer.init)  # per member: see bench_offpolicy.py on vmapped brax init
    states = [init(jax.random.PRNGKey(0), hp) for hp in hps]
    stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(jax.jit(trainer.run_members, static_argnums=2)(
        stack(states), stack(hps), trainer.num_updates))
    print(f"[{', '.join(labels)}: {time.perf_counter() - start:.0f}s]")
    for i, label in enumerate(labels):
        saturation_report(label, config, jax.tree.map(lambda x: x[i], state), jax.tree.map(lambda x: x[i], metrics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40_000, help="env steps per variant")
    args = parser.parse_args()
    groups: dict[tuple, list[str]] = {}
    for label, (config_overrides, _) in VARIANTS.items():
        groups.setdefault(tuple(sorted(config_overrides.items())), []).append(label)
    for labels in groups.values():
        run_group(labels, args.steps)


if __name__ == "__main__":
    main()
