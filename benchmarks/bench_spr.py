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
episodes per seed; a seed's score is their mean return. `benchmarks/harness.py`
runs the comparison and writes `scores.json`, a report per env and learning
curves (training return, and SPR's loss).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from rlzoo.benchmarks.harness import Contender, compare

from rlzoo.algorithms import dqn, spr


def contenders(env_id: str, steps: int) -> dict[str, Contender]:
    """SPR and C51 with the same data settings (spr.Config's defaults, learning_starts capped at steps / 10)."""
    spr_config = spr.Config(env_id=env_id, total_timesteps=steps, learning_starts=min(2_000, steps // 10))
    shared = {field: getattr(spr_config, field) for field in (
        "env_id", "total_timesteps", "num_envs", "train_every", "buffer_size", "batch_size", "learning_starts",
        "n_step", "loss", "num_atoms", "v_min", "v_max")}
    spr_hparams = spr.HParams()
    c51_hparams = dqn.HParams(**{field.name: getattr(spr_hparams, field.name) for field in dataclasses.fields(dqn.HParams)})
    return {"C51": Contender(dqn.make_train, dqn.Config(**shared), c51_hparams),
            "SPR": Contender(spr.make_train, spr_config, spr_hparams)}


def spr_loss_curve(metrics: dict) -> dict[str, np.ndarray]:
    return {"spr_loss": np.asarray(metrics["spr_loss"])} if "spr_loss" in metrics else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Breakout-MinAtar"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/spr")
    args = parser.parse_args()
    compare({env_id: contenders(env_id, args.steps) for env_id in args.envs}, args.seeds, args.out,
            budget={"steps": args.steps}, extra_curves=spr_loss_curve)


if __name__ == "__main__":
    main()
