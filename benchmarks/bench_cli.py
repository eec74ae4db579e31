"""What users run against the bare compiled program: the CLI harness's cost and the compilation cache.

    .venv/bin/python benchmarks/bench_cli.py --out benchmarks/results/cli.json

Cases, one seed each: PPO on CartPole-v1 (its defaults are PureJaxRL's configuration, 5e5 steps), DQN on
CartPole-v1 and SAC on Pendulum-v1 with their defaults. Each round runs, one after another, each in a fresh
process so that no in-memory cache carries over:

- bare: `jax.jit(jax.vmap(trainer))` timed by `bench_ppo.time_program` (compile, then the best of
  `--repeats` calls);
- CLI, first: `python algorithms/<algo>.py --env-id <env> --run-dir <tmp>` with default flags (20 chunks,
  evaluation after each, checkpoints, metrics.csv, plot) and an empty compilation cache folder;
- CLI, cached: the same command again, with the cache the first run filled.

- rejax (PPO only, where the peer venv of `make bench-peer` exists): rejax's PPO on the same
  configuration, 1 seed, no evaluation (`peer_ppo.py --peer rejax`), its first call's run time.

`run_s` and `compile_s` of the CLI are read from its summary.json. Ratios use the best of `--rounds`
rounds: CLI run_s / bare run_s (the harness's cost), first / cached compile_s, and CLI run_s / rejax run_s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
CASES = {"ppo": "CartPole-v1", "dqn": "CartPole-v1", "sac": "Pendulum-v1"}

BARE = """
import json
import jax
from rlzoo.algorithms import {algo} as module
from rlzoo.benchmarks.bench_ppo import time_program
from rlzoo.sweep import seed_keys
trainer, hparams = module.make_train(module.Config(env_id="{env_id}", **{overrides!r})), module.HParams()
result = time_program(lambda keys: jax.vmap(trainer, in_axes=(0, None))(keys, hparams), seed_keys(0, 1), {repeats})
print(json.dumps({{"compile_s": result["compile_s"], "run_s": result["run_s"]}}))
"""


def flags(overrides: dict) -> list[str]:
    """Config overrides as CLI flags: {"total_timesteps": 8192} -> ["--total-timesteps", "8192"]."""
    return [part for name, value in overrides.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def run_bare(algo: str, env_id: str, repeats: int, overrides: dict | None = None) -> dict:
    env = {**os.environ, "RLZOO_COMPILE_CACHE": "0", "JAX_COMPILATION_CACHE_DIR": ""}
    code = BARE.format(algo=algo, env_id=env_id, repeats=repeats, overrides=overrides or {})
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_cli(algo: str, env_id: str, run_dir: Path, cache_dir: Path, overrides: dict | None = None,
            run_flags: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "RLZOO_COMPILE_CACHE_DIR": str(cache_dir), "JAX_COMPILATION_CACHE_DIR": ""}
    # --preset none: the bare program is built from the plain Config defaults, so the CLI must run those too.
    command = [sys.executable, f"algorithms/{algo}.py", "--env-id", env_id, "--run-dir", str(run_dir),
               "--no-progress", "--preset", "none", *flags(overrides or {}), *run_flags]
    subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in ("compile_s", "run_s", "compile_cache")}


def run_rejax() -> dict:
    """rejax's PPO, PureJaxRL's CartPole configuration (= our PPO defaults), 1 seed, in the peer venv."""
    command = [str(PEER_PYTHON), "benchmarks/peer_ppo.py", "--peer", "rejax", "--num-seeds", "1", "--one-run"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {k: v for k, v in json.loads(out.strip().splitlines()[-1]).items() if k in ("compile_s", "run_s")}


def measure(algo: str, env_id: str, rounds: int, repeats: int, overrides: dict | None = None,
            run_flags: tuple[str, ...] = ()) -> dict:
    """Bare, CLI first and CLI cached, `rounds` times in fresh processes; the best of each and their ratios."""
    per_round = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            bare = run_bare(algo, env_id, repeats, overrides)
            first = run_cli(algo, env_id, scratch / "first", scratch / "cache", overrides, run_flags)
            cached = run_cli(algo, env_id, scratch / "cached", scratch / "cache", overrides, run_flags)
        per_round.append({"bare": bare, "cli_first": first, "cli_cached": cached})
        if algo == "ppo" and not overrides and not run_flags and PEER_PYTHON.exists():
            per_round[-1]["rejax"] = run_rejax()
        print(json.dumps({algo: per_round[-1]}), flush=True)
    best = lambda key, field: min(r[key][field] for r in per_round)  # noqa: E731
    result = {
        "env_id": env_id, "overrides": overrides or {}, "run_flags": list(run_flags), "rounds": per_round,
        "bare_run_s": best("bare", "run_s"),
        "cli_run_s": min(best("cli_first", "run_s"), best("cli_cached", "run_s")),
        "bare_compile_s": best("bare", "compile_s"), "cli_first_compile_s": best("cli_first", "compile_s"),
        "cli_cached_compile_s": best("cli_cached", "compile_s"),
    }
    result["cli_over_bare_run"] = result["cli_run_s"] / result["bare_run_s"]
    result["first_over_cached_compile"] = result["cli_first_compile_s"] / result["cli_cached_compile_s"]
    if all("rejax" in r for r in per_round):
        result["rejax_run_s"] = best("rejax", "run_s")
        result["cli_over_rejax_run"] = result["cli_run_s"] / result["rejax_run_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="calls of the bare compiled program per round")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {algo: measure(algo, CASES[algo], args.rounds, args.repeats) for algo in args.algos}
    print("\n| algorithm | env | bare run s | CLI run s | CLI / bare | compile s: bare, CLI first, CLI cached | "
          "first / cached |\n|---|---|---|---|---|---|---|")
    for algo, r in results.items():
        print(f"| {algo} | {r['env_id']} | {r['bare_run_s']:.2f} | {r['cli_run_s']:.2f} | "
              f"{r['cli_over_bare_run']:.2f} | {r['bare_compile_s']:.1f}, {r['cli_first_compile_s']:.1f}, "
              f"{r['cli_cached_compile_s']:.2f} | {r['first_over_cached_compile']:.1f} |")
        if "rejax_run_s" in r:
            print(f"  {algo}: rejax run s {r['rejax_run_s']:.2f}, CLI / rejax {r['cli_over_rejax_run']:.2f}")
    if args.out:
        import jax

        machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                   "cpus": os.cpu_count(), "jax": jax.__version__, "device": str(jax.devices()[0])}
        Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
