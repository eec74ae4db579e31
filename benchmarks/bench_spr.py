"""SPR vs C51 on MinAtar at equal environment steps (low-data): IQM and 95% bootstrap CIs over seeds.

    .venv/bin/python benchmarks/bench_spr.py --seeds 8 --envs Breakout-MinAtar --steps 100000 \
        --out benchmarks/results/spr
    .venv/bin/python benchmarks/bench_spr.py --seeds 2 --steps 2000 --out /tmp/bench_spr   # a quick check

Both contenders share spr.py's data settings (4 envs, a gradient step per vectorised
step on 32 samples, a 100k replay buffer, learning from 2k steps, 3-step returns, a
51-atom C51 support on [0, 20], epsilon 1 -> 0.01 over the first 20% of steps, the
target network refreshed every 100 updates): "C51" is `dqn.py --loss c51`, the same
Q-network as SPR's online Q path; "SPR" adds the K = 5 step prediction loss
(weight 5, EMA target tau 0.99) and random-shift augmentation. Each (algorithm,
env) trains all seeds as one vmapped program, then plays 10 greedy evaluation
episodes per seed; the score per seed is that mean greedy return. Writes
`scores.json`, a report (`rlzoo.report`: IQM, mean and median with
stratified-bootstrap CIs, probability of improvement) and learning curves
(training episode return and SPR loss, mean over seeds) per env.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlzoo.algorithms import dqn, spr  # noqa: E402
from rlzoo.evaluate import greedy_member_returns  # noqa: E402
from rlzoo.report import write_report  # noqa: E402
from rlzoo.stats import bootstrap_ci, iqm  # noqa: E402
from rlzoo.sweep import run_sweep  # noqa: E402


def contenders(env_id: str, steps: int) -> dict:
    """SPR and C51 with the same data settings (spr.Config's defaults, learning_starts capped at steps / 10)."""
    spr_config = spr.Config(env_id=env_id, total_timesteps=steps, learning_starts=min(2_000, steps // 10))
    shared = {field: getattr(spr_config, field) for field in (
        "env_id", "total_timesteps", "num_envs", "train_every", "buffer_size", "batch_size", "learning_starts",
        "n_step", "loss", "num_atoms", "v_min", "v_max")}
    spr_hparams = spr.HParams()
    c51_hparams = dqn.HParams(**{field: getattr(spr_hparams, field) for field in (
        "lr", "gamma", "tau", "target_period", "eps_start", "eps_end", "exploration_fraction", "max_grad_norm")})
    return {
        "C51": (dqn.make_train(dqn.Config(**shared)), c51_hparams),
        "SPR": (spr.make_train(spr_config), spr_hparams),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Breakout-MinAtar"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/spr")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    scores: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for env_id in args.envs:
        fig, (ax_return, ax_spr) = plt.subplots(1, 2, figsize=(10, 3.5))
        for index, (name, (trainer, hparams)) in enumerate(contenders(env_id, args.steps).items()):
            start = time.perf_counter()
            result = run_sweep(trainer, hparams, {}, seed=0, num_seeds=args.seeds)
            state, metrics = jax.block_until_ready(result.outputs)
            seconds.setdefault(name, {})[env_id] = time.perf_counter() - start  # compile + run
            per_seed = greedy_member_returns(trainer, state, jax.random.PRNGKey(12345))
            scores.setdefault(name, {})[env_id] = per_seed.tolist()
            env_steps = np.asarray(metrics["env_steps"][0])
            ax_return.plot(env_steps, np.nanmean(np.asarray(metrics["episode_return"]), axis=0), f"C{index}",
                           label=name)
            if "spr_loss" in metrics:
                ax_spr.plot(env_steps, np.asarray(metrics["spr_loss"]).mean(axis=0), f"C{index}", label=name)
            low, high = bootstrap_ci(per_seed, iqm)
            print(f"{env_id} {name}: greedy IQM {iqm(per_seed):.2f} [{low:.2f}, {high:.2f}] "
                  f"(seeds {np.round(per_seed, 2).tolist()}), {seconds[name][env_id]:.0f}s", flush=True)
        ax_return.set(title=env_id, xlabel="environment steps", ylabel="training episode return")
        ax_spr.set(title="SPR K-step loss", xlabel="environment steps", ylabel="2 - 2 cos, mean over k")
        ax_return.legend()
        fig.tight_layout()
        fig.savefig(out / f"curves_{env_id}.png", dpi=110)
        plt.close(fig)

    (out / "scores.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "scores": scores,
                                                 "seconds": seconds, "devices": [str(d) for d in jax.devices()]},
                                                indent=2) + "\n")
    for env_id in args.envs:
        per_label = {name: np.asarray(s[env_id])[:, None] for name, s in scores.items()}
        write_report(per_label, out / f"report_{env_id}", tasks=[env_id])
        print((out / f"report_{env_id}" / "report.md").read_text())


if __name__ == "__main__":
    main()
