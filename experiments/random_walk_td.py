"""Sutton & Barto's Fig. 12.3 (and 12.6, 12.8): RMS error of TD(lambda) methods on the 19-state random walk.

    python -m rlzoo.experiments.random_walk_td                        # the offline lambda-return, Fig. 12.3
    python -m rlzoo.experiments.random_walk_td --method true-online   # true online TD(lambda), Fig. 12.8
    python -m rlzoo.experiments.random_walk_td --method accumulating  # accumulating traces, Fig. 12.6

For every lambda x alpha x run, a tabular value function (V_0 = 0, gamma = 1)
learns from 10 episodes of the uniform random walk, and the RMS error against
the true values is averaged over the estimates after each episode and over 100
runs. The whole grid is one `jax.jit(vmap(...))` program; every alpha and lambda
sees the same episodes. `run_random_walk` writes `rms_vs_alpha.png`,
`rms_vs_alpha.csv`/`.md` and `summary.json` (`best_rms`, `best_by_lambda`) into
the run folder. This module also holds the two offline, episode-at-a-time
algorithms of section 12.1 (the offline lambda-return algorithm and offline
TD(lambda)); the online steps they are compared with, and TD(lambda) as a
trainer on any environment, are in `rlzoo.algorithms.td`. Not here: the
environment itself (`rlzoo.envs.random_walk`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.algorithms.td import accumulating_td_step, true_online_td_step
from rlzoo.trainer import ConfigError, check
from rlzoo.envs.random_walk import RandomWalk
from rlzoo.runner import CONFIG_FILE, SUMMARY_FILE, write_json
from rlzoo.returns import lambda_returns

# --------------------------------------------------------------------------- offline algorithms, one episode at a time


def episode_lambda_returns(w, next_xs, rewards, terminated, mask, gamma, lam):
    """G^lam_t of one (padded) episode under fixed weights w (eq. 12.2); steps where mask = 0 are padding."""
    terminated, mask = jnp.asarray(terminated, bool), jnp.asarray(mask, bool)
    cut = ~mask & ~terminated  # padding ends the recursion, so it never feeds back into a real step
    return lambda_returns(rewards, next_xs @ w, terminated, cut, gamma, lam)


def offline_lambda_return_episode(w, xs, next_xs, rewards, terminated, mask, alpha, gamma, lam,
                                  sequential: bool = True):
    """The offline lambda-return algorithm (section 12.1) on one episode; returns the weights after it.

    The lambda-returns use the weights of the episode's start; the updates
    w <- w + alpha [G^lam_t - w.x_t] x_t are made at the episode's end, one after
    another (`sequential`, as in the book) or all from the start weights and summed.
    """
    chex.assert_rank([xs, next_xs, rewards], [2, 2, 1])
    returns = episode_lambda_returns(w, next_xs, rewards, terminated, mask, gamma, lam)

    def update(w_t, step):
        x, g, m = step
        return w_t + alpha * m * (g - jnp.dot(w_t if sequential else w, x)) * x, None

    return jax.lax.scan(update, w, (xs, returns, mask.astype(w.dtype)))[0]


def offline_td_lambda_episode(w, xs, next_xs, rewards, terminated, mask, alpha, gamma, lam):
    """Accumulating TD(lambda) with offline updates: sum_t alpha delta_t z_t at the episode's end, w held fixed."""
    chex.assert_rank([xs, next_xs, rewards], [2, 2, 1])

    def step(carry, transition):
        increment, trace = carry
        x, next_x, r, term, m = transition
        _, trace, delta = accumulating_td_step(w, trace, x, r, next_x, term, alpha, gamma, lam)
        return (increment + m * alpha * delta * trace, trace), None

    zeros = jnp.zeros_like(w)
    (increment, _), _ = jax.lax.scan(step, (zeros, zeros), (xs, next_xs, rewards, terminated, mask.astype(w.dtype)))
    return w + increment


# --------------------------------------------------------------------------- Fig. 12.3: the 19-state random walk


@dataclasses.dataclass(frozen=True)
class RandomWalkExperiment:
    """RMS error on the 19-state random walk against alpha, one curve per lambda (Sutton & Barto, Fig. 12.3)."""

    experiment: Literal["random-walk"] = "random-walk"
    """The experiment to run."""
    method: Literal["offline-lambda-return", "true-online", "accumulating"] = "offline-lambda-return"
    """Algorithm: offline lambda-return (Fig. 12.3), true online TD(lambda) (Fig. 12.8) or TD(lambda) (Fig. 12.6)."""
    lambdas: tuple[float, ...] = (0.0, 0.4, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0)
    """lambda values, one curve each."""
    alphas: tuple[float, ...] = (0.01, 0.02, 0.04, 0.06, 0.08, *(round(0.1 * i, 1) for i in range(1, 11)))
    """Step sizes alpha."""
    num_runs: int = 100
    """Independent runs (each its own episodes, shared by every alpha and lambda)."""
    num_episodes: int = 10
    """Episodes per run; the error is averaged over the value estimates after each."""
    seed: int = 0
    """Seed of the episodes."""
    run_dir: str | None = None
    """Output folder (default runs/td_random_walk_<time>)."""

    def __post_init__(self):
        for lam in self.lambdas:
            check(0.0 <= lam <= 1.0, "lambdas", lam, "each lambda must lie in [0, 1]")
        for alpha in self.alphas:
            check(0.0 < alpha <= 1.0, "alphas", alpha, "each alpha must lie in (0, 1]")
        for name in ("num_runs", "num_episodes"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")


def random_walk_episodes(key: jax.Array, num_states: int, max_steps: int) -> tuple[jax.Array, jax.Array]:
    """Positions s_0..s_{max_steps} of one uniform random walk from the middle, frozen once it leaves; its length."""
    moves = jnp.where(jax.random.bernoulli(key, 0.5, (max_steps,)), 1, -1)

    def step(position, move):
        inside = (position > 0) & (position <= num_states)
        return position + inside * move, position

    start = (num_states + 1) // 2
    last, positions = jax.lax.scan(step, jnp.asarray(start), moves)
    positions = jnp.append(positions, last)
    return positions, jnp.sum((positions[:-1] > 0) & (positions[:-1] <= num_states))


def random_walk_rms(positions: jax.Array, method: str, alpha, lam, num_states: int = 19) -> jax.Array:
    """Mean over episodes of the RMS error of V after each episode, for one run [episodes, steps + 1] (gamma = 1)."""
    xs = jax.nn.one_hot(positions[:, :-1] - 1, num_states)  # terminal states have no features (V = 0)
    next_xs = jax.nn.one_hot(positions[:, 1:] - 1, num_states)
    mask = (positions[:, :-1] > 0) & (positions[:, :-1] <= num_states)
    terminated = mask & ((positions[:, 1:] == 0) | (positions[:, 1:] == num_states + 1))
    rewards = jnp.where(terminated, jnp.where(positions[:, 1:] == 0, -1.0, 1.0), 0.0)
    true_values = RandomWalk(num_states).true_values()

    def online(w, episode):
        def step(carry, t):
            (w, trace, v_old), (x, next_x, r, term, m) = carry, t
            if method == "true-online":
                new_w, trace, v_old, _ = true_online_td_step(w, trace, v_old, x, r, next_x, term, alpha, 1.0, lam)
            else:
                new_w, trace, _ = accumulating_td_step(w, trace, x, r, next_x, term, alpha, 1.0, lam)
            return (jnp.where(m, new_w, w), trace, v_old), None

        return jax.lax.scan(step, (w, jnp.zeros_like(w), jnp.zeros(())), episode)[0][0]

    def episode(w, data):
        offline = method == "offline-lambda-return"
        w = offline_lambda_return_episode(w, *data, alpha, 1.0, lam) if offline else online(w, data)
        return w, jnp.sqrt(jnp.mean(jnp.square(w - true_values)))

    _, errors = jax.lax.scan(episode, jnp.zeros(num_states), (xs, next_xs, rewards, terminated, mask))
    return errors.mean()


def run_random_walk(experiment: RandomWalkExperiment) -> dict[str, Any]:
    """Runs the alpha x lambda x runs grid as one program and writes rms_vs_alpha.png, rms_vs_alpha.csv/.md, summary."""
    run_dir = Path(experiment.run_dir or f"runs/td_random_walk_{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"run_dir={str(run_dir)!r} already holds a run: choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, {"algo": "td", "experiment": dataclasses.asdict(experiment)})
    num_states, max_steps = 19, 4096  # P(a walk from the middle lasts 4096 steps) < 1e-20
    keys = jax.random.split(jax.random.PRNGKey(experiment.seed), (experiment.num_runs, experiment.num_episodes))
    positions, lengths = jax.jit(jax.vmap(jax.vmap(lambda k: random_walk_episodes(k, num_states, max_steps))))(keys)
    steps = int(np.ceil((int(lengths.max()) + 1) / 128) * 128)  # trim the padding: one compile per 128 steps
    positions = positions[..., :steps + 1]

    start = time.perf_counter()
    per_run = jax.vmap(lambda pos, a, lam: random_walk_rms(pos, experiment.method, a, lam, num_states), (0, None, None))
    grid = jax.jit(jax.vmap(jax.vmap(lambda a, lam: per_run(positions, a, lam).mean(), (0, None)), (None, 0)))
    rms = np.asarray(grid(jnp.asarray(experiment.alphas), jnp.asarray(experiment.lambdas)))  # [lambdas, alphas]
    seconds = time.perf_counter() - start
    rms = np.where(np.isfinite(rms), rms, np.inf)
    best = {f"{lam:g}": {"alpha": experiment.alphas[int(np.argmin(row))], "rms": float(np.min(row))}
            for lam, row in zip(experiment.lambdas, rms)}
    summary = {"best_rms": float(rms.min()), "best_by_lambda": best, "method": experiment.method,
               "mean_episode_length": float(lengths.mean()), "grid_s": seconds, "run_dir": str(run_dir)}
    write_json(run_dir / SUMMARY_FILE, summary)
    header = ["lambda", *(f"{a:g}" for a in experiment.alphas)]
    rows = [[f"{lam:g}", *(f"{v:.4f}" for v in row)] for lam, row in zip(experiment.lambdas, rms)]
    (run_dir / "rms_vs_alpha.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]) + "\n"
    (run_dir / "rms_vs_alpha.md").write_text(table)
    plot_rms_vs_alpha(run_dir / "rms_vs_alpha.png", experiment, rms)
    print(table)
    print(f"best RMS {summary['best_rms']:.3f} ({experiment.method}); run folder: {run_dir}")
    return summary


def plot_rms_vs_alpha(path, experiment: RandomWalkExperiment, rms) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for lam, row in zip(experiment.lambdas, rms):
        ax.plot(experiment.alphas, row, marker=".", label=f"lambda = {lam:g}")
    ax.set(xlabel="alpha", ylabel="RMS error over the first 10 episodes", ylim=(0.2, 0.6),
           title=f"19-state random walk, {experiment.method}, {experiment.num_runs} runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """The command line: `python -m rlzoo.experiments.random_walk_td [--method ...]`."""
    import tyro

    try:
        run_random_walk(tyro.cli(RandomWalkExperiment, config=(tyro.conf.FlagConversionOff,)))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
