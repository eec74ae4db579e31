"""i-QN (K = 3, 5) vs DQN at equal environment steps: IQM and 95% bootstrap CIs over seeds.

    .venv/bin/python benchmarks/bench_iqn.py --seeds 8 --envs CartPole-v1 Acrobot-v1 \
        --steps 500000 --out benchmarks/results/iqn

Each (algorithm, env) trains all seeds as one vmapped program with the files'
defaults (DQN: hard target copy every 50 updates; i-QN: D = 10, T = 50 updates),
then plays 10 greedy evaluation episodes per seed. The score per seed is that
greedy return. Writes `scores.json`, a report (`rlzoo.report`: IQM, mean, median
with stratified-bootstrap CIs, probability of improvement) and learning curves
(training episode return, mean over seeds) per env.
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

from rlzoo.algorithms import dqn, iqn  # noqa: E402
from rlzoo.evaluate import greedy_member_returns  # noqa: E402
from rlzoo.report import write_report  # noqa: E402
from rlzoo.sweep import run_sweep  # noqa: E402


def contenders(env_id: str, steps: int) -> dict:
    common = dict(env_id=env_id, total_timesteps=steps)
    if env_id.endswith("MinAtar"):
        common.update(learning_starts=min(10_000, steps // 10))
    return {
        "DQN": (dqn.make_train(dqn.Config(**common)), dqn.HParams()),
        "i-QN K=3": (iqn.make_train(iqn.Config(num_heads=3, **common)), iqn.HParams()),
        "i-QN K=5": (iqn.make_train(iqn.Config(num_heads=5, **common)), iqn.HParams()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/iqn")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    scores: dict[str, dict[str, list[float]]] = {}
    for env_id in args.envs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, (trainer, hparams) in contenders(env_id, args.steps).items():
            start = time.perf_counter()
            result = run_sweep(trainer, hparams, {}, seed=0, num_seeds=args.seeds)
            state, metrics = jax.block_until_ready(result.outputs)
            seconds = time.perf_counter() - start  # compile + run
            per_seed = greedy_member_returns(trainer, state, jax.random.PRNGKey(12345))
            scores.setdefault(name, {})[env_id] = per_seed.tolist()
            curve = np.nanmean(np.asarray(metrics["episode_return"]), axis=0)
            ax.plot(np.asarray(metrics["env_steps"][0]), curve, label=name)
            print(f"{env_id} {name}: greedy {np.mean(scores[name][env_id]):.1f} "
                  f"(seeds {np.round(scores[name][env_id], 1).tolist()}), {seconds:.0f}s", flush=True)
        ax.set(title=env_id, xlabel="environment steps", ylabel="training episode return")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"curves_{env_id}.png", dpi=110)
        plt.close(fig)

    (out / "scores.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "scores": scores},
                                                indent=2) + "\n")
    for env_id in args.envs:
        per_label = {name: np.asarray(s[env_id])[:, None] for name, s in scores.items()}
        write_report(per_label, out / f"report_{env_id}", tasks=[env_id])
        print((out / f"report_{env_id}" / "report.md").read_text())


if __name__ == "__main__":
    main()
