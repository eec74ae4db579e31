"""Offline RL: CSVE and the baselines (BC, TD3+BC, IQL, CQL) on rlzoo's own D4RL-style datasets.

First write the datasets (`python -m rlzoo.experiments.offline_datasets`, one env per command),
then train every algorithm on every (env, tier):

    .venv/bin/python -m rlzoo.experiments.offline_datasets --env-id brax/hopper --learner sac --out datasets ...
    .venv/bin/python benchmarks/bench_offline.py --datasets datasets --envs brax/hopper brax/halfcheetah \
        brax/walker2d --tiers medium medium-replay medium-expert --seeds 5 --updates 1000000

Each (algorithm, env, tier) trains all seeds as one vmapped program with the
dataset as a jit input (`Trainer.run_members`), each algorithm's own defaults
(its paper's hyperparameters, 2x256 networks, batch 256), `--updates` gradient
steps in chunks of `--chunk`. Then `--episodes` greedy episodes per seed on the
dataset's env; a seed's score is D4RL's normalised score of their mean return,
(return - random) / (expert - random) x 100, with the reference returns stored
in the dataset. The evaluation program is compiled once per (algorithm, env) and
reused for every tier. Writes `scores.json` (scores, times, settings) and a
report per env (`rlzoo.report`: IQM, mean, median with stratified-bootstrap CIs
over seeds, tiers as tasks) into `--out`, and prints the table of IQM [95% CI]
per (env, tier). Results of other envs already in `scores.json` at the same
budget are kept.

`--timing`: the time for `--updates` gradient steps of one seed per algorithm on
the first (env, tier), chunks compiled once and run back to back, and the time
for 1M updates extrapolated from it (JAX-CORL's published single-GPU times for
1M updates are 9-56 minutes, depending on the algorithm).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rlzoo.benchmarks.harness import ResultsFile, machine, score_table, write_reports

from rlzoo import datasets
from rlzoo.algorithms import bc, cql, csve, iql, td3_bc
from rlzoo.evaluate import greedy_member_evaluator
from rlzoo.offline import load_offline_data
from rlzoo.sweep import expand_members, make_grid, seed_keys

HERE = Path(__file__).resolve().parent
ALGORITHMS = {"BC": bc, "TD3+BC": td3_bc, "IQL": iql, "CQL": cql, "CSVE": csve}
TIERS = ("medium", "medium-replay", "medium-expert")


def dataset_path(folder: str, env_id: str, tier: str) -> Path:
    return Path(folder) / env_id.replace("/", "-") / f"{tier}.hdf5"


def train_members(trainer, hparams, num_seeds: int, num_updates: int, chunk: int, seeds_per_program: int = 0):
    """Init all seeds, then `num_updates // chunk` calls of one compiled chunk: (states, init_s, compile_s, run_s).

    `seeds_per_program` > 0 trains the seeds in groups of that size, one group after another, through one
    program compiled for a group; 0 vmaps all seeds in one program. The seeds' keys are the same either way.
    """
    data = trainer.data
    keys, hp = expand_members(seed_keys(0, num_seeds), make_grid(hparams, {}).hparams)  # one configuration
    group = seeds_per_program or num_seeds
    if num_seeds % group:
        raise ValueError(f"--seeds-per-program {group} must divide --seeds {num_seeds}")
    start = time.perf_counter()
    states = jax.block_until_ready(jax.jit(trainer.init_members)(keys, hp, data))
    init_s = time.perf_counter() - start
    updates_per_chunk = chunk // trainer.env_steps_per_update

    def take(tree, i: int):
        """Group i's slice of every leaf."""
        return jax.tree.map(lambda x: x[i * group:(i + 1) * group], tree)

    start = time.perf_counter()
    program = jax.jit(lambda s, h, d: trainer.run_members(s, h, updates_per_chunk, d)[0]).lower(
        take(states, 0), take(hp, 0), data).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    num_chunks, num_groups = num_updates // chunk, num_seeds // group
    trained = []
    for g in range(num_groups):
        group_states, group_hp = take(states, g), take(hp, g)
        for i in range(num_chunks):
            # One program in flight at a time (XLA CPU once deadlocked with programs queued back to back).
            group_states = jax.block_until_ready(program(group_states, group_hp, data))
            print(f"  seeds {g * group}-{(g + 1) * group - 1}, chunk {i + 1}/{num_chunks}: "
                  f"{(i + 1) * chunk:,} updates per seed, {time.perf_counter() - start:.0f} s", flush=True)
        trained.append(group_states)
    states = jax.tree.map(lambda *parts: jnp.concatenate(parts), *trained)
    return states, init_s, compile_s, time.perf_counter() - start


def make_trainer(name: str, path: Path, updates: int, chunk: int, csve_model_seed: int | None = None):
    data = load_offline_data(str(path))
    module = ALGORITHMS[name]
    options = {"model_seed": csve_model_seed} if name == "CSVE" else {}
    config = module.Config(dataset=str(path), total_updates=updates, steps_per_update=chunk, episodes_per_eval=0,
                           **options)
    return module.make_train(config, data), module.HParams(), data.metadata


def bench_scores(args) -> None:
    out = Path(args.out)
    results = ResultsFile(out / "scores.json", {"updates": args.updates, "seeds": args.seeds,
                                                "eval_episodes": args.episodes})
    for env_id in args.envs:
        for name in args.algos:
            evaluator = None
            for tier in args.tiers:
                path = dataset_path(args.datasets, env_id, tier)
                trainer, hparams, metadata = make_trainer(name, path, args.updates, args.chunk,
                                                          args.csve_model_seed)
                states, init_s, compile_s, run_s = train_members(trainer, hparams, args.seeds, args.updates,
                                                                 args.chunk, args.seeds_per_program)
                start = time.perf_counter()
                evaluator = evaluator or greedy_member_evaluator(trainer, args.episodes)
                returns = np.asarray(evaluator(states, jax.random.split(jax.random.PRNGKey(12345), args.seeds)))
                eval_s = time.perf_counter() - start
                normalised = datasets.normalized_score(metadata, returns)
                task = f"{env_id}:{tier}"
                times = {"init_s": round(init_s, 1), "compile_s": round(compile_s, 1), "run_s": round(run_s, 1),
                         "eval_s": round(eval_s, 1), "seeds_per_program": args.seeds_per_program or args.seeds}
                print(f"{task} {name}: normalised {np.round(normalised, 1).tolist()} (returns "
                      f"{np.round(returns, 1).tolist()}), {times}", flush=True)
                results.record(name, task, scores=np.round(np.asarray(normalised, np.float64), 2).tolist(),
                               times_s=times)
                results.update(datasets=args.datasets, references={
                    task: {k: metadata[k] for k in ("ref_min_score", "ref_max_score", "policy_return")}})
                if name == "CSVE":
                    results.update(settings={"CSVE": {"model_seed": args.csve_model_seed}})
    scores = results.scores()
    print(score_table(scores, f"dataset ({args.seeds} seeds)"))
    # Each env's report covers every tier of it in scores.json (earlier runs' too), for the algorithms that have
    # them all: a run of one tier must not replace the report of a run of three.
    write_reports(out, scores, {env_id: [f"{env_id}:{tier}" for tier in TIERS
                                         if any(f"{env_id}:{tier}" in s for s in scores.values())]
                                for env_id in args.envs})


def bench_timing(args) -> None:
    path = dataset_path(args.datasets, args.envs[0], args.tiers[0])
    rows = []
    for name in args.algos:
        trainer, hparams, _ = make_trainer(name, path, args.updates, args.chunk, args.csve_model_seed)
        _, init_s, compile_s, run_s = train_members(trainer, hparams, 1, args.updates, args.chunk)
        rows.append({"algo": name, "updates": args.updates, "init_s": round(init_s, 1),
                     "compile_s": round(compile_s, 1), "run_s": round(run_s, 1),
                     "minutes_per_1M_updates": round(run_s * 1e6 / args.updates / 60, 1)})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps({
        "dataset": str(path), "rows": rows, "jax": jax.__version__,
        "machine": machine()}, indent=2) + "\n")
    print("| algorithm | updates timed | run s | min per 1M updates (extrapolated) | compile s | init s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['algo']} | {row['updates']:,} | {row['run_s']} | {row['minutes_per_1M_updates']} | "
              f"{row['compile_s']} | {row['init_s']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="datasets", help="folder of <env>/<tier>.hdf5 (rlzoo.experiments.offline_datasets)")
    parser.add_argument("--envs", nargs="+", default=["brax/hopper", "brax/halfcheetah", "brax/walker2d"])
    parser.add_argument("--tiers", nargs="+", default=list(TIERS))
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=1_000_000, help="gradient steps per seed")
    parser.add_argument("--seeds-per-program", type=int, default=0,
                        help="train the seeds in groups of this size, one after another (0: all in one vmap)")
    parser.add_argument("--chunk", type=int, default=5_000, help="gradient steps per compiled call")
    parser.add_argument("--episodes", type=int, default=10, help="greedy evaluation episodes per seed")
    parser.add_argument("--out", default=str(HERE / "results" / "offline"))
    parser.add_argument("--csve-model-seed", type=int, default=None,
                        help="CSVE's seeds share one dynamics ensemble fitted from this seed (default: one per seed)")
    parser.add_argument("--timing", action="store_true", help="time --updates steps of one seed per algorithm")
    args = parser.parse_args()
    if args.updates % args.chunk:
        parser.error(f"--updates ({args.updates}) must be a multiple of --chunk ({args.chunk})")
    if args.seeds_per_program < 0 or (args.seeds_per_program and args.seeds % args.seeds_per_program):
        parser.error(f"--seeds-per-program ({args.seeds_per_program}) must be 0 or divide --seeds ({args.seeds})")
    bench_timing(args) if args.timing else bench_scores(args)


if __name__ == "__main__":
    main()
