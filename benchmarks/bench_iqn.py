"""i-QN (K = 3, 5) vs DQN at equal environment steps: IQM and 95% bootstrap CIs over seeds.

    .venv/bin/python benchmarks/bench_iqn.py --seeds 8 --envs CartPole-v1 Acrobot-v1 \
        --steps 500000 --out benchmarks/results/iqn

Each (algorithm, env) trains all seeds as one vmapped program with the files'
defaults (DQN: hard target copy every 50 updates; i-QN: D = 10, T = 50 updates),
then plays 10 greedy evaluation episodes per seed; a seed's score is their mean
return. `benchmarks/harness.py` runs the comparison and writes `scores.json`, a
report per env and learning curves.
"""

from __future__ import annotations

import argparse

from rlzoo.benchmarks.harness import Contender, compare

from rlzoo.algorithms import dqn, iqn


def contenders(env_id: str, steps: int) -> dict[str, Contender]:
    common = dict(env_id=env_id, total_timesteps=steps)
    if env_id.endswith("MinAtar"):
        common.update(learning_starts=min(10_000, steps // 10))
    return {
        "DQN": Contender(dqn.make_train, dqn.Config(**common), dqn.HParams()),
        "i-QN K=3": Contender(iqn.make_train, iqn.Config(num_heads=3, **common), iqn.HParams()),
        "i-QN K=5": Contender(iqn.make_train, iqn.Config(num_heads=5, **common), iqn.HParams()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/iqn")
    args = parser.parse_args()
    compare({env_id: contenders(env_id, args.steps) for env_id in args.envs}, args.seeds, args.out,
            budget={"steps": args.steps})


if __name__ == "__main__":
    main()
