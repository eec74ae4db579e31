"""The one benchmark command: every benchmark at the size of a tier, resumable, one results file.

    python -m rlzoo.benchmarks.bench --tier smoke                 # every benchmark at toy size; the tests run it
    python -m rlzoo.benchmarks.bench --tier cpu                   # the CPU-sized tables of benchmarks/README.md
    python -m rlzoo.benchmarks.bench --tier gpu --max-minutes 8   # one accelerator, at most 8 minutes
    python -m rlzoo.benchmarks.bench --tier gpu --list            # the jobs and their sizes, without running them

A tier is a list of jobs; a job is one unit of one benchmark, e.g. (PPO, Breakout-MinAtar) of `learn`, and
has a run folder `<out>/<tier>/jobs/<job>/` holding its `result.json`. A job whose folder already holds a
result at the same sizes is skipped, so an interrupted tier resumes where it stopped and a second command
adds only what is missing; a job that fails records its error and the tier goes on. After each job,
`<out>/<tier>/results.json` (every result, the machine, the device and the package versions) and
`summary.md` (one table per benchmark) are written anew from all the run folders.

Benchmarks:
- `learn`: an algorithm on a task, all seeds as one vmapped program (`harness.train_seeds`), compile and
  run timed apart; the score per seed is the mean return of greedy episodes; env steps/s counts all seeds.
- `env_speed`: raw env steps/s of an environment (gymnax's and each package's), random legal actions through
  `VecEnv` in one jitted scan (`bench_envs`); beside it, `learn` jobs of PPO on the package tasks give what
  training on them runs at.
- `sequence_speed`: one PPO update of S5 against GRU at rollout lengths T (`bench_s5.time_updates`).
- `offline_pace`: gradient steps of BC, IQL, CQL and CSVE timed on a small locally written dataset and
  extrapolated to 1M updates (`bench_offline`'s trainer and chunked program).
- `sweep_vs_separate`: M members (learning rates x seeds) as one vmapped program against the same M runs
  one after another through one compiled single-run program.
- `cli_overhead`: `python algorithms/<algo>.py` against the bare compiled program, and its second identical
  run against the first (`bench_cli.measure`, fresh processes).
- `parity`: one of our algorithms and its reference implementation at the same hyperparameters, budget and
  seeds, scored alike; ours is a `learn` job, the reference runs its own code from a checkout outside this
  repository in the peer venv (`make bench-peer`; `benchmarks/peer_*.py`). The summary pairs them: IQM
  [95% CI] of each, P(ours > reference) [95% CI] and env steps/s side by side.

`--max-minutes` stops starting jobs once the tier has run that long (jobs are ordered by priority), so a
lent accelerator is never overrun; the jobs not reached are listed in the summary and run at the next call.
The smoke tier swaps brax tasks for Pendulum-v1 (compiling brax takes minutes on 2 CPU cores) and keeps
every other code path; its numbers check that the benchmarks run, not what they measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.benchmarks import bench_cli
from rlzoo.benchmarks.harness import EVAL_KEY, iqm_ci, train_seeds
from rlzoo.evaluate import greedy_member_returns
from rlzoo.runner import mean_of_finished, package_version
from rlzoo.stats import probability_of_improvement, probability_of_improvement_ci
from rlzoo.sweep import seed_keys

TIERS = ("smoke", "cpu", "gpu")
MINATAR = ("Breakout-MinAtar", "SpaceInvaders-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar")


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of one benchmark: `run(folder) -> result` at `sizes` (what a resumed job must match)."""

    benchmark: str
    unit: str
    sizes: dict[str, Any]
    run: Callable[[Path], dict[str, Any]]

    @property
    def name(self) -> str:
        return f"{self.benchmark}__{self.unit}".replace("/", "-").replace(" ", "_").replace("=", "")


# ----------------------------------------------------------------------------- benchmarks


def learn_settings(algo: str, env_id: str, steps: int, config: dict | None = None,
                   hparams: dict | None = None) -> tuple[Any, Any, Any]:
    """(algorithm module, Config, HParams) of a `learn` job; builds (and so checks) them without training."""
    module = importlib.import_module(f"rlzoo.algorithms.{algo}")
    return (module, module.Config(env_id=env_id, total_timesteps=steps, **(config or {})),
            module.HParams(**(hparams or {})))


def learn(algo: str, env_id: str, steps: int, seeds: int, eval_episodes: int, config: dict | None = None,
          hparams: dict | None = None) -> Callable[[Path], dict[str, Any]]:
    """Trains `algo` on `env_id` for `steps` env steps per seed, all seeds vmapped; greedy scores and speed."""

    def run(folder: Path) -> dict[str, Any]:
        module, config_, hparams_ = learn_settings(algo, env_id, steps, config, hparams)
        trainer = module.make_train(config_)
        trained = train_seeds(trainer, hparams_, seeds)
        scores = greedy_member_returns(trainer, trained.state, EVAL_KEY, eval_episodes)
        env_steps = trainer.num_updates * trainer.env_steps_per_update
        return {"scores": scores.tolist(), "score_iqm_ci": iqm_ci(scores), **trained.times_s,
                "env_steps_per_seed": env_steps, "env_steps_per_s": env_steps * seeds / trained.times_s["run_s"],
                "final_training_return": mean_of_finished(np.asarray(trained.metrics["episode_return"])[:, -1])}

    return run


def env_speed(env_id: str, num_envs: int, steps: int) -> Callable[[Path], dict[str, Any]]:
    """Raw env steps/s of `env_id` through `VecEnv`: random legal actions, one jitted scan (`bench_envs`)."""

    def run(folder: Path) -> dict[str, Any]:
        from rlzoo.benchmarks import bench_envs

        return {"num_envs": num_envs, "env_steps_per_s": bench_envs.steps_per_second(env_id, num_envs, steps)}

    return run


def sequence_speed(size: str, length: int, repeats: int) -> Callable[[Path], dict[str, Any]]:
    """One PPO update of S5 and of GRU (bench_s5's settings at `size`), rollouts of `length` steps."""

    def run(folder: Path) -> dict[str, Any]:
        from rlzoo.benchmarks import bench_s5

        configs = {model: bench_s5.Config(num_steps=length, total_timesteps=bench_s5.SPEED["num_envs"] * length,
                                          **bench_s5.SPEED, **bench_s5.model_settings(size, model))
                   for model in ("s5", "gru")}
        timed = bench_s5.time_updates(configs, repeats)
        return {**timed, "gru_over_s5_update_time": timed["gru"]["update_s"] / timed["s5"]["update_s"]}

    return run


def offline_dataset(env_id: str, tier_size: int, behaviour_steps: int) -> Path:
    """A medium-tier dataset of `env_id`, written once per machine (its quality does not change the pace)."""
    from rlzoo.experiments import offline_datasets

    out = Path(tempfile.gettempdir()) / "rlzoo-bench-datasets" / f"{tier_size}_{behaviour_steps}"
    config = offline_datasets.GenerateConfig(env_id=env_id, out=str(out), tiers=("medium",), tier_size=tier_size,
                                             num_envs=max(1, min(100, tier_size // 1_000)), behaviour_timesteps=behaviour_steps,
                                             num_snapshots=3, eval_episodes=2)
    path = out / env_id.replace("/", "-") / "medium.hdf5"
    if not path.exists():
        offline_datasets.generate(config)
    return path


def offline_pace(algo: str, env_id: str, updates: int, chunk: int, tier_size: int,
                 behaviour_steps: int) -> Callable[[Path], dict[str, Any]]:
    """`updates` gradient steps of one seed, chunks compiled once and run back to back; 1M extrapolated."""

    def run(folder: Path) -> dict[str, Any]:
        from rlzoo.benchmarks import bench_offline

        path = offline_dataset(env_id, tier_size, behaviour_steps)
        trainer, hparams, _ = bench_offline.make_trainer(algo, path, updates, chunk)
        _, init_s, compile_s, run_s = bench_offline.train_members(trainer, hparams, 1, updates, chunk)
        return {"init_s": init_s, "compile_s": compile_s, "run_s": run_s, "updates": updates,
                "s_per_10k_updates": run_s / updates * 10_000, "minutes_per_1m_updates": run_s / updates * 1e6 / 60}

    return run


def sweep_vs_separate(members: int, steps: int) -> Callable[[Path], dict[str, Any]]:
    """PPO on CartPole-v1: `members` (lr x seed) members as one vmapped program against `members` single runs.

    Both compile once; the separate runs reuse one compiled single-run program, one call after another,
    which is the fastest way to run them one by one.
    """

    def run(folder: Path) -> dict[str, Any]:
        from rlzoo.algorithms import ppo

        trainer = ppo.make_train(ppo.Config(env_id="CartPole-v1", total_timesteps=steps))
        keys = seed_keys(0, members)
        lrs = jnp.geomspace(1e-4, 1e-2, members)

        def train_one(key, lr):
            return trainer(key, dataclasses.replace(ppo.HParams(), lr=lr))[1]["episode_return"][-1]

        start = time.perf_counter()
        one = jax.jit(train_one).lower(keys[0], lrs[0]).compile()
        separate_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        separate = [one(key, lr) for key, lr in zip(keys, lrs)]
        jax.block_until_ready(separate)
        separate_run_s = time.perf_counter() - start
        start = time.perf_counter()
        together = jax.jit(jax.vmap(train_one)).lower(keys, lrs).compile()
        sweep_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        swept = jax.block_until_ready(together(keys, lrs))
        sweep_run_s = time.perf_counter() - start
        return {"members": members, "sweep_compile_s": sweep_compile_s, "sweep_run_s": sweep_run_s,
                "separate_compile_s": separate_compile_s, "separate_run_s": separate_run_s,
                "separate_over_sweep_run": separate_run_s / sweep_run_s,
                "same_results": bool(np.allclose(np.asarray(separate), np.asarray(swept), equal_nan=True))}

    return run


def cli_overhead(algo: str, env_id: str, overrides: dict, rounds: int,
                 run_flags: tuple[str, ...] = ()) -> Callable[[Path], dict[str, Any]]:
    """The CLI against the bare program (`overrides`: Config fields for both; `run_flags`: the CLI's own)."""

    def run(folder: Path) -> dict[str, Any]:
        return bench_cli.measure(algo, env_id, rounds, repeats=2, overrides=overrides, run_flags=run_flags)

    return run


BENCHMARKS_DIR = Path(__file__).resolve().parent
PEER_PYTHON = BENCHMARKS_DIR.parent / ".venv-peer" / "bin" / "python"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A reference implementation: its script here, the variable naming its checkout (passed as `flag`),
    switches the script always gets (`switches`, each documented in the script), and whether it is given our
    spec's hyperparameters as flags (`given_hyperparameters`; else it reads the reference's own config file)."""

    name: str
    script: str
    checkout_variable: str
    flag: str
    switches: tuple[str, ...] = ()
    given_hyperparameters: bool = False


def peer(reference: Peer, arguments: dict[str, Any]) -> Callable[[Path], dict[str, Any]]:
    """Runs the reference's script in the peer venv with `--<name> value` arguments and its checkout (the
    folder its environment variable names); the script's one JSON line (scores, times) is the result."""

    def run(folder: Path) -> dict[str, Any]:
        if not PEER_PYTHON.exists():
            raise RuntimeError(f"no peer venv at {PEER_PYTHON}: run `make bench-peer` first")
        checkout = os.environ.get(reference.checkout_variable)
        if not checkout or not Path(checkout).is_dir():
            raise RuntimeError(f"{reference.checkout_variable}={checkout!r} is not a folder: set it to a checkout "
                               f"of {reference.name} (benchmarks/README.md says which repository and commit)")
        command = [str(PEER_PYTHON), str(BENCHMARKS_DIR / reference.script), reference.flag, checkout,
                   *reference.switches,
                   *[part for name, value in arguments.items() for part in (f"--{name}", str(value))]]
        done = subprocess.run(command, capture_output=True, text=True)
        (folder / "peer.log").write_text(done.stderr)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:]
            raise RuntimeError(f"{reference.script} exited with {done.returncode}: {last}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {**result, "score_iqm_ci": iqm_ci(result["scores"]), "command": " ".join(command)}

    return run


# ----------------------------------------------------------------------------- tiers


def learn_jobs(algos: dict[str, dict], tasks: tuple[str, ...], steps: int, seeds: int, episodes: int) -> list[Job]:
    """A `learn` job per (algorithm label, task); `algos[label]` = {"algo", "config", "hparams"}."""
    return [Job("learn", f"{label}/{task}", {"task": task, "steps": steps, "seeds": seeds, "eval_episodes": episodes,
                                             **spec},
                learn(spec["algo"], task, steps, seeds, episodes, spec.get("config"), spec.get("hparams")))
            for task in tasks for label, spec in algos.items()]


def preset_spec(label: str) -> dict[str, Any]:
    """A preset (`rlzoo.presets`) as a job spec {"algo", "config", "hparams"}, its budget left to the job."""
    import importlib

    from rlzoo import presets

    preset = next(p for p in presets.PRESETS if p.label == label)
    module = importlib.import_module(f"rlzoo.algorithms.{preset.algo}")
    config, hparams = presets.split_values(preset, module.Config, module.HParams)
    return {"algo": preset.algo, "config": {k: v for k, v in config.items() if k != "total_timesteps"},
            "hparams": hparams}


# PPO on MinAtar: purejaxql's `config/alg/ppo_minatar.yaml` (64 envs x 128 steps, 4 epochs x 8 minibatches,
# lr 5e-3 annealed, entropy 1e-4, clip 0.2, max grad norm 0.5, relu): the preset ppo/minatar.
PPO_MINATAR = preset_spec("ppo/minatar")
VALUE_BASED_MINATAR = {
    "DQN": {"algo": "dqn", "config": {}},
    "C51": {"algo": "dqn", "config": {"loss": "c51", "v_max": 20.0}},
    "i-QN K=3": {"algo": "iqn", "config": {"num_heads": 3}},
    "SPR": {"algo": "spr", "config": {}},
}
OFFLINE = ("BC", "IQL", "CQL", "CSVE")
# PQN on MinAtar: purejaxql's `config/alg/pqn_minatar.yaml` (128 envs x 32 steps, 2 epochs x 32 minibatches,
# LayerNorm, RAdam lr 5e-4 decayed linearly, max grad norm 10, gamma 0.99, lambda 0.65, epsilon 1 -> 0.05 over
# the first 10% of updates, rewards unscaled): the preset pqn/minatar.
PQN_MINATAR = preset_spec("pqn/minatar")
# The games whose dynamics gymnax 0.0.9 (the peers' pinned version) and 1.x (ours) share: 1.x only renamed
# is_terminal, split off truncation and made observations bool. SpaceInvaders differs (0.0.9 starts with an
# extra column of aliens), so it is left out of the peer pairs.
PARITY_GAMES = ("Breakout-MinAtar", "Asterix-MinAtar")
# --conv-as-matmul: XLA CPU runs purejaxql's seed-vmapped nn.Conv as a grouped convolution, 4.3x slower at 5
# seeds (benchmarks/README.md); the same convolution as a matmul keeps its algorithm and makes 2e6 steps x 5
# seeds fit a CPU session. PureJaxRL's PPO has no MinAtar config: it gets PPO_MINATAR's values as flags and
# trains our MinAtar network (peer_ppo_minatar.py says why and how).
PEERS = {"PQN": Peer("purejaxql", "peer_pqn.py", "PUREJAXQL_DIR", "--purejaxql-dir", ("--conv-as-matmul",)),
         "PPO": Peer("purejaxrl", "peer_ppo_minatar.py", "PUREJAXRL_DIR", "--purejaxrl-dir",
                     given_hyperparameters=True)}


def hyperparameter_flags(spec: dict) -> dict[str, Any]:
    """A spec's Config and HParams values as `--name value` arguments of a peer script (activation excepted: the
    peer scripts fix the network)."""
    values = {**spec.get("config", {}), **spec.get("hparams", {})}
    return {name.replace("_", "-"): value for name, value in values.items() if name != "activation"}


def parity_jobs(algos: dict[str, dict], tasks: tuple[str, ...], steps: int, seeds: int, episodes: int) -> list[Job]:
    """Per (algorithm label, task): ours as a `learn` run and the reference's own code (`PEERS[label]`)."""
    jobs = []
    for task in tasks:
        for label, spec in algos.items():
            reference = PEERS[label]
            sizes = {"task": task, "steps": steps, "seeds": seeds, "eval_episodes": episodes}
            jobs += [Job("parity", f"{label}/{task}/rlzoo", {**sizes, **spec},
                         learn(spec["algo"], task, steps, seeds, episodes, spec.get("config"), spec.get("hparams"))),
                     Job("parity", f"{label}/{task}/{reference.name}",
                         {**sizes, "peer": reference.script, "switches": list(reference.switches)},
                         peer(reference, {"env-id": task, "total-timesteps": steps, "num-seeds": seeds,
                                          "eval-episodes": episodes,
                                          **(hyperparameter_flags(spec) if reference.given_hyperparameters else {})}))]
    return jobs


# One task per environment package (rlzoo.env_backends), for PPO's steps/s beside the raw env's.
PACKAGE_TASKS = ("craftax/Craftax-Classic-Symbolic-v1", "navix/Navix-Empty-5x5-v0", "xminigrid/MiniGrid-Empty-5x5",
                 "jumanji/Game2048-v1", "pgx/2048", "playground/CartpoleBalance")


# A JAX env beside its host copy (rlzoo.host_envs), for PPO's steps/s on each.
HOST_TASKS = ("CartPole-v1", "gymnasium/CartPole-v1")


def env_speed_jobs(num_envs: int, steps: int, host: bool = False) -> list[Job]:
    """Raw steps/s of gymnax's and every package's env; with `host`, of the host envs too (Gymnasium, Atari)."""
    from rlzoo.benchmarks.bench_envs import ENV_IDS, HOST_ENV_IDS

    return [Job("env_speed", env_id, {"num_envs": num_envs, "steps": steps}, env_speed(env_id, num_envs, steps))
            for env_id in (*ENV_IDS, *(HOST_ENV_IDS if host else ()))]


PRESET_SEEDS = 5
# Presets whose full budget fits the CPU tier (5 seeds in a few minutes each); the others run in the GPU tier.
CPU_PRESETS = ("ppo/cartpole", "pqn/cartpole", "dqn/acrobot", "sac/pendulum", "td3/pendulum")


def preset_jobs(labels: tuple[str, ...], episodes: int = 16) -> list[Job]:
    """Each preset at its own budget on each of its benchmark envs, PRESET_SEEDS seeds: the expected-results
    table of docs/presets.md."""
    from rlzoo import presets

    jobs = []
    for preset in (p for p in presets.PRESETS if p.label in labels):
        spec = preset_spec(preset.label)
        jobs += learn_jobs({f"preset_{preset.label}": spec}, preset.envs_to_benchmark(), steps=preset.budget,
                           seeds=PRESET_SEEDS, episodes=episodes)
    return jobs


def smoke_jobs() -> list[Job]:
    """Every benchmark at toy size, one algorithm per kind of learner (on-policy, value-based: PQN as our half of
    a parity pair, actor-critic) and two offline ones; every other job's settings are checked by the tests
    without training."""
    tiny_ppo = {"algo": "ppo", "config": dict(num_envs=4, num_steps=32, num_minibatches=2, num_epochs=1)}
    tiny_sac = {"algo": "sac", "config": dict(learning_starts=64, buffer_size=512, batch_size=16)}
    tiny_pqn = {"algo": "pqn", "config": dict(num_envs=4, num_steps=32, num_minibatches=2, num_epochs=1)}
    return [
        *learn_jobs({"PPO": tiny_ppo}, ("Breakout-MinAtar",), steps=256, seeds=2, episodes=2),
        *learn_jobs({"sac": tiny_sac}, ("Pendulum-v1",), steps=256, seeds=2, episodes=1),
        # Our half of a parity pair (the reference half needs the peer venv, which the tests do not build).
        parity_jobs({"PQN": tiny_pqn}, ("Breakout-MinAtar",), steps=256, seeds=2, episodes=2)[0],
        Job("sequence_speed", "test/T=32", {"size": "test", "T": 32}, sequence_speed("test", 32, repeats=1)),
        Job("env_speed", "pgx/2048", {"num_envs": 4, "steps": 16}, env_speed("pgx/2048", 4, 16)),
        *[Job("offline_pace", f"{algo}/Pendulum-v1", {"updates": 20}, offline_pace(algo, "Pendulum-v1", 20, 10,
                                                                                   tier_size=2_000,
                                                                                   behaviour_steps=4_096))
          for algo in ("BC", "IQL")],
        Job("sweep_vs_separate", "ppo/CartPole-v1", {"members": 4, "steps": 1024},
            sweep_vs_separate(members=4, steps=1024)),
        Job("cli_overhead", "ppo/CartPole-v1", {"total_timesteps": 4096},
            cli_overhead("ppo", "CartPole-v1", {"total_timesteps": 4096}, rounds=1, run_flags=("--num-chunks", "2"))),
    ]


def cpu_jobs() -> list[Job]:
    """What fits a 2-core CPU in about an hour per table: the README's CPU-sized comparisons."""
    return [
        *[Job("cli_overhead", f"{algo}/{env}", {"defaults": True}, cli_overhead(algo, env, {}, rounds=2))
          for algo, env in bench_cli.CASES.items()],
        Job("sweep_vs_separate", "ppo/CartPole-v1", {"members": 16, "steps": 100_000},
            sweep_vs_separate(members=16, steps=100_000)),
        *parity_jobs({"PQN": PQN_MINATAR, "PPO": PPO_MINATAR}, PARITY_GAMES, steps=2_000_000, seeds=5, episodes=10),
        *learn_jobs(VALUE_BASED_MINATAR, ("Breakout-MinAtar",), steps=100_000, seeds=5, episodes=10),
        *[Job("sequence_speed", f"small/T={t}", {"size": "small", "T": t}, sequence_speed("small", t, repeats=2))
          for t in (128, 1024)],
        *env_speed_jobs(num_envs=64, steps=128, host=True),
        *learn_jobs({"PPO": PPO_MINATAR}, PACKAGE_TASKS, steps=2 * 64 * 128, seeds=1, episodes=2),
        *learn_jobs({"PPO": {"algo": "ppo"}}, HOST_TASKS, steps=100_000, seeds=1, episodes=8),
        *preset_jobs(CPU_PRESETS),
        # SAC on a DM Control task of MuJoCo Playground: one env, one update per env step, as in the DMC papers.
        *learn_jobs({"SAC": {"algo": "sac", "config": dict(num_envs=1)}}, ("playground/CartpoleBalance",),
                    steps=30_000, seeds=2, episodes=4),
        *[Job("offline_pace", f"{algo}/Pendulum-v1", {"updates": 2_000},
              offline_pace(algo, "Pendulum-v1", 2_000, 1_000, tier_size=20_000, behaviour_steps=65_536))
          for algo in OFFLINE],
    ]


def gpu_jobs() -> list[Job]:
    """Sized for one H200 in at most 8 minutes (the sizes are estimates until the first run; see the README)."""
    continuous = {name: {"algo": name, "config": dict(num_envs=16, utd_ratio=2, learning_starts=5_000,
                                                      buffer_size=1_000_000, batch_size=256,
                                                      hidden_sizes=(256, 256))}
                  for name in ("sac", "td3")}
    return [
        *learn_jobs({"PPO": PPO_MINATAR, "PQN": PQN_MINATAR}, MINATAR, steps=10_000_000, seeds=16, episodes=32),
        *[Job("sequence_speed", f"reference/T={t}", {"size": "reference", "T": t},
              sequence_speed("reference", t, repeats=3)) for t in (128, 1024, 4096)],
        *env_speed_jobs(num_envs=4096, steps=128),
        Job("sweep_vs_separate", "ppo/CartPole-v1", {"members": 64, "steps": 500_000},
            sweep_vs_separate(members=64, steps=500_000)),
        *[Job("offline_pace", f"{algo}/brax-hopper", {"updates": 10_000},
              offline_pace(algo, "brax/hopper", 10_000, 5_000, tier_size=100_000, behaviour_steps=40_960))
          for algo in OFFLINE],
        *learn_jobs(VALUE_BASED_MINATAR, MINATAR[:2], steps=1_000_000, seeds=16, episodes=32),
        *learn_jobs(continuous, ("brax/hopper", "brax/halfcheetah"), steps=200_000, seeds=8, episodes=8),
        *[Job("cli_overhead", f"{algo}/{env}", {"defaults": True}, cli_overhead(algo, env, {}, rounds=1))
          for algo, env in bench_cli.CASES.items()],
    ]


TIER_JOBS = {"smoke": smoke_jobs, "cpu": cpu_jobs, "gpu": gpu_jobs}


# ----------------------------------------------------------------------------- running and reporting


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """The machine, the device and the package versions every results file records."""

    device = jax.devices()[0]
    return {"machine": {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "device": {"platform": device.platform, "kind": device.device_kind, "count": len(jax.devices())},
            "versions": {name: package_version(name) for name in ("rlzoo", "jax", "jaxlib", "flax", "optax", "gymnax",
                                                          "brax", "craftax", "navix", "xminigrid", "jumanji",
                                                          "pgx")}}


def run_job(job: Job, folder: Path) -> dict[str, Any]:
    """Runs `job` unless its folder holds a result at the same sizes; returns the result (or the error)."""
    path = folder / "result.json"
    sizes = json.loads(json.dumps(job.sizes))
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("sizes") == sizes and "error" not in done:
            return done
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = {"benchmark": job.benchmark, "unit": job.unit, "sizes": sizes, **job.run(folder)}
    except Exception as error:  # noqa: BLE001  (a failed job is recorded and the tier goes on)
        traceback.print_exc()
        result = {"benchmark": job.benchmark, "unit": job.unit, "sizes": sizes, "error": repr(error)}
    result["job_s"] = time.perf_counter() - start
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def summary_tables(results: dict[str, dict[str, Any]], not_reached: list[str]) -> str:
    """Markdown: one table per benchmark, one row per job."""
    columns = {
        "learn": ("score IQM [95% CI]", "env steps/s", "compile s", "run s"),
        "parity": ("score IQM [95% CI]", "env steps/s", "compile s", "run s"),
        "env_speed": ("envs", "raw env steps/s"),
        "sequence_speed": ("S5 update s", "GRU update s", "GRU / S5"),
        "offline_pace": ("s per 10k updates", "minutes per 1M updates", "compile s"),
        "sweep_vs_separate": ("members", "sweep run s", "separate run s", "separate / sweep", "same results"),
        "cli_overhead": ("bare run s", "CLI run s", "CLI / bare", "compile s first", "compile s cached",
                         "first / cached", "CLI / rejax"),
    }

    def cells(r: dict[str, Any]) -> list[str]:
        b = r["benchmark"]
        if b in ("learn", "parity"):
            point, low, high = r["score_iqm_ci"]
            return [f"{point:.1f} [{low:.1f}, {high:.1f}]", f"{r['env_steps_per_s']:,.0f}", f"{r['compile_s']:.1f}",
                    f"{r['run_s']:.1f}"]
        if b == "env_speed":
            return [str(r["num_envs"]), f"{r['env_steps_per_s']:,.0f}"]
        if b == "sequence_speed":
            return [f"{r['s5']['update_s']:.3f}", f"{r['gru']['update_s']:.3f}", f"{r['gru_over_s5_update_time']:.2f}"]
        if b == "offline_pace":
            return [f"{r['s_per_10k_updates']:.1f}", f"{r['minutes_per_1m_updates']:.1f}", f"{r['compile_s']:.1f}"]
        if b == "sweep_vs_separate":
            return [str(r["members"]), f"{r['sweep_run_s']:.2f}", f"{r['separate_run_s']:.2f}",
                    f"{r['separate_over_sweep_run']:.1f}", str(r["same_results"])]
        return [f"{r['bare_run_s']:.2f}", f"{r['cli_run_s']:.2f}", f"{r['cli_over_bare_run']:.2f}",
                f"{r['cli_first_compile_s']:.1f}", f"{r['cli_cached_compile_s']:.2f}",
                f"{r['first_over_cached_compile']:.1f}",
                f"{r['cli_over_rejax_run']:.2f}" if "cli_over_rejax_run" in r else ""]

    lines = []
    for benchmark, heads in columns.items():
        rows = [r for r in results.values() if r["benchmark"] == benchmark]
        if not rows:
            continue
        lines += [f"\n### {benchmark}\n", "| job | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for r in rows:
            body = [f"failed: {r['error'].splitlines()[0][:160]}"] + [""] * (len(heads) - 1) if "error" in r else cells(r)
            lines.append(f"| {r['unit']} | " + " | ".join(body) + " |")
    lines += parity_pairs([r for r in results.values() if r["benchmark"] == "parity" and "error" not in r])
    if not_reached:
        lines += ["\nNot reached within --max-minutes (run the command again to add them): " + ", ".join(not_reached)]
    return "\n".join(lines) + "\n"


def parity_pairs(results: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per (algorithm, task) with both halves done, ours against the reference side by side."""
    by_pair: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        pair, side = r["unit"].rsplit("/", 1)
        by_pair.setdefault(pair, {})[side] = r
    rows = []
    for pair, sides in by_pair.items():
        if "rlzoo" not in sides or len(sides) < 2:
            continue
        ours, (name, reference) = sides["rlzoo"], next((k, v) for k, v in sides.items() if k != "rlzoo")
        x, y = np.c_[ours["scores"]], np.c_[reference["scores"]]  # [seeds, 1 task]
        low, high = probability_of_improvement_ci(x, y)
        cells = [f"{p:.1f} [{lo:.1f}, {hi:.1f}]" for p, lo, hi in (ours["score_iqm_ci"], reference["score_iqm_ci"])]
        rows.append(f"| {pair} | {name} | {cells[0]} | {cells[1]} | {probability_of_improvement(x, y):.2f} "
                    f"[{low:.2f}, {high:.2f}] | {ours['env_steps_per_s']:,.0f} | {reference['env_steps_per_s']:,.0f} |")
    if not rows:
        return []
    return ["\n### parity: ours against the reference\n",
            "| algorithm/task | reference | ours IQM [95% CI] | reference IQM [95% CI] | P(ours > reference) [95% CI] "
            "| ours env steps/s | reference env steps/s |", "|---" * 7 + "|", *rows]


def write_results(tier: str, out: Path, jobs: list[Job], not_reached: list[str]) -> dict[str, Any]:
    """results.json and summary.md of the tier, from every job folder that holds a result."""
    results = {}
    for job in jobs:
        path = out / "jobs" / job.name / "result.json"
        if path.exists():
            results[job.name] = json.loads(path.read_text())
    env = environment()
    payload = {"tier": tier, **env, "written": time.strftime("%Y-%m-%d %H:%M:%S"), "jobs": results,
               "not_reached": not_reached}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    header = (f"# Benchmark tier `{tier}`\n\n{env['machine']['processor']} ({env['machine']['cpus']} cores), "
              f"{env['device']['count']} x "
              f"{env['device']['kind']} ({env['device']['platform']}); " +
              ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"; written {payload['written']}\n")
    (out / "summary.md").write_text(header + summary_tables(results, not_reached))
    return payload


def run_tier(tier: str, out: Path, only: tuple[str, ...] = (), max_minutes: float | None = None) -> dict[str, Any]:
    """Runs the tier's jobs (those whose name contains one of `only`, if given) and writes its results."""
    out = Path(out) / tier
    out.mkdir(parents=True, exist_ok=True)
    every_job = TIER_JOBS[tier]()
    jobs = [job for job in every_job if not only or any(part in job.name for part in only)]
    start, not_reached = time.perf_counter(), []
    for i, job in enumerate(jobs):
        if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
            not_reached = [j.name for j in jobs[i:]]
            break
        result = run_job(job, out / "jobs" / job.name)
        state = "failed" if "error" in result else f"{result['job_s']:.1f} s"
        print(f"[bench {tier}] {i + 1}/{len(jobs)} {job.name}: {state}", flush=True)
        write_results(tier, out, every_job, not_reached)
    return write_results(tier, out, every_job, not_reached)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=TIERS, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tiers"))
    parser.add_argument("--only", nargs="+", default=(), help="run only jobs whose name contains one of these")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no job after this many minutes")
    parser.add_argument("--list", action="store_true", help="print the tier's jobs and sizes, run nothing")
    options = parser.parse_args(args)
    if options.list:
        for job in TIER_JOBS[options.tier]():
            print(f"{job.name}: {json.dumps(job.sizes, default=str)}")
        return
    payload = run_tier(options.tier, options.out, tuple(options.only), options.max_minutes)
    print((options.out / options.tier / "summary.md").read_text())
    failed = [name for name, r in payload["jobs"].items() if "error" in r]
    if failed:
        print(f"failed jobs: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
