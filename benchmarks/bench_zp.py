"""ZP targets (EMA, detached, online) vs no auxiliary loss on CartPole-v1 with distractor dimensions.

    .venv/bin/python benchmarks/bench_zp.py --seeds 8 --distractors 16 64 --steps 80000 --out benchmarks/results/zp
    .venv/bin/python benchmarks/bench_zp.py --seeds 2 --distractors 16 --steps 4000 --out /tmp/bench_zp   # quick check

Every contender is `algorithms/zp.py` with its defaults (4 envs, a gradient step on
64 samples per vectorised step, Adam 1e-3, latent 32, EMA tau 0.005 for the Q
target and the EMA encoder, epsilon 1 -> 0.05 over the first 20% of steps), and
differs only in the ZP loss: `--zp-target ema | detached | online` with weight 1,
or "no ZP": weight 0 (zp.py has no "none" target; with zp_coef = 0 the latent
model gets no gradient and the encoder learns from the DQN loss alone).

Each (contender, distractor count) trains all seeds as one vmapped program at the
same number of env steps (the vmapped update scanned in 25 equal chunks), and
- after each of the last 5 chunks plays 10 greedy episodes per seed (with the
  distractors). The score per seed is the mean greedy return over these 5 x 10
  episodes; the final policy's alone and the best of the 5 (the measure
  `tests/test_zp.py` asserts >= 400 on) are kept in `scores.json` too;
- measures the representation's effective rank: srank (99% of the singular-value
  mass, `zp.effective_rank`, the measure `tests/test_zp.py` uses) of the encoder's
  latents for 512 replayed observations per seed (128 buffer rows spread over the
  whole buffer x 4 envs), and the training metric `latent_srank` (the same
  measure on each 64-sample batch) averaged over the last 1% of updates.

Writes `scores.json` (`benchmarks/harness.py`'s results file: `scores` holds the
per-seed score, `details` the rest), one report per distractor count and one over
both (`rlzoo.report`), and `curves.png` (training episode return and batch srank
against env steps, mean over seeds).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlzoo.benchmarks.harness import ResultsFile, write_reports  # noqa: E402

from rlzoo.algorithms import zp  # noqa: E402
from rlzoo.evaluate import greedy_member_evaluator  # noqa: E402
from rlzoo.stats import bootstrap_ci, iqm  # noqa: E402
from rlzoo.sweep import seed_keys  # noqa: E402

# Reuse compiled programs across runs of this script (the tests share the same cache folder).
jax.config.update("jax_compilation_cache_dir", str(Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

VARIANTS = {  # label -> (zp_target, zp_coef)
    "ZP EMA": ("ema", 1.0),
    "ZP detached": ("detached", 1.0),
    "ZP online": ("online", 1.0),
    "no ZP": ("ema", 0.0),
}


def contender(variant: str, num_distractors: int, steps: int) -> tuple[zp.Config, zp.HParams]:
    """zp.py's defaults with the variant's ZP target and weight."""
    target, coef = VARIANTS[variant]
    return (zp.Config(zp_target=target, num_distractors=num_distractors, total_timesteps=steps),
            zp.HParams(zp_coef=coef))


def train_and_evaluate(trainer, hparams: zp.HParams, num_seeds: int, num_chunks: int = 25, num_evals: int = 5):
    """All seeds as one vmapped program (`Trainer.run_members`, as `run_sweep` runs them) in `num_chunks` equal
    chunks (one compile), with greedy evaluations after each of the last `num_evals` (as in tests/test_zp.py).

    Returns (final state, metrics [seeds, updates], greedy returns [num_evals, seeds]).
    """
    per_chunk = trainer.num_updates // num_chunks
    member_hparams = jax.tree.map(lambda x: jnp.full((num_seeds,), x, jnp.float32), hparams)
    run = jax.jit(lambda states, hps: trainer.run_members(states, hps, per_chunk))
    greedy_scores = greedy_member_evaluator(trainer)
    state = jax.jit(jax.vmap(trainer.init))(seed_keys(0, num_seeds), member_hparams)
    chunks, scores = [], []
    for chunk in range(num_chunks):
        state, metrics = run(state, member_hparams)
        chunks.append(jax.device_get(metrics))
        if chunk >= num_chunks - num_evals:
            keys = jax.random.split(jax.random.PRNGKey(12345 + chunk), num_seeds)
            scores.append(np.asarray(greedy_scores(state, keys)))
    metrics = jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts], axis=1), *chunks)
    return state, metrics, np.stack(scores)


def replay_srank(config: zp.Config, state, num_rows: int = 128) -> np.ndarray:
    """srank of the encoder's latents for num_rows x num_envs replayed observations per seed."""
    _, network = zp.make_env_and_network(config)
    filled = int(np.asarray(state.buffer.size).min())
    rows = np.linspace(0, filled - 1, num_rows).astype(int)
    obs = state.buffer.data.obs[:, rows]  # [seeds, rows, envs, obs_dim]
    obs = obs.reshape(obs.shape[0], -1, obs.shape[-1])

    def srank(params, member_obs):
        return zp.effective_rank(network.apply(params, member_obs, method=zp.ZPNetwork.encode))

    return np.asarray(jax.jit(jax.vmap(srank))(state.params, obs))


def window_mean(values: np.ndarray, points: int = 100) -> np.ndarray:
    """Means over `points` equal windows of the last axis (for plotting 20k-update curves)."""
    usable = values.shape[-1] // points * points
    return np.nanmean(values[..., :usable].reshape(*values.shape[:-1], points, -1), axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distractors", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=80_000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/zp")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tasks = [f"CartPole-v1+distractors{n}" for n in args.distractors]
    results = ResultsFile(out / "scores.json", {"steps": args.steps, "seeds": args.seeds})
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 6.5), squeeze=False)
    for column, (num_distractors, task) in enumerate(zip(args.distractors, tasks)):
        for index, name in enumerate(VARIANTS):
            config, hparams = contender(name, num_distractors, args.steps)
            trainer = zp.make_train(config)
            start = time.perf_counter()
            state, metrics, evaluations = train_and_evaluate(trainer, hparams, args.seeds)
            seconds = time.perf_counter() - start  # compile + run + evaluations
            scores = evaluations.mean(axis=0)
            sranks = replay_srank(config, state)
            batch_srank = np.asarray(metrics["latent_srank"], np.float64)
            tail = max(1, batch_srank.shape[1] // 100)
            details = {
                "greedy_return_final": np.round(evaluations[-1], 2).tolist(),
                "greedy_return_best_of_5": np.round(evaluations.max(axis=0), 2).tolist(),
                "replay_srank": sranks.tolist(),
                "batch_srank_final": np.round(batch_srank[:, -tail:].mean(axis=1), 2).tolist(),
                "zp_loss_final": np.round(np.asarray(metrics["zp_loss"])[:, -tail:].mean(axis=1), 4).tolist(),
                "seconds": round(seconds, 1),
            }
            env_steps = window_mean(np.asarray(metrics["env_steps"][0], np.float64))
            with warnings.catch_warnings():  # no episode has finished yet in the first updates (NaN)
                warnings.simplefilter("ignore", RuntimeWarning)
                returns = window_mean(np.nanmean(np.asarray(metrics["episode_return"]), axis=0))
            axes[0, column].plot(env_steps, returns, f"C{index}", label=name)
            axes[1, column].plot(env_steps, window_mean(batch_srank.mean(axis=0)), f"C{index}", label=name)
            results.record(name, task, scores=np.round(scores, 2).tolist(), details=details)  # a cut run keeps it
            low, high = bootstrap_ci(scores, iqm)
            print(f"{task} {name}: greedy IQM {iqm(scores):.1f} [{low:.1f}, {high:.1f}] "
                  f"(seeds {np.round(scores, 1).tolist()}; final {np.round(evaluations[-1], 1).tolist()}), "
                  f"replay srank {sranks.tolist()}, {seconds:.0f}s",
                  flush=True)
        axes[0, column].set(title=task, xlabel="environment steps", ylabel="training episode return")
        axes[1, column].set(xlabel="environment steps", ylabel=f"latent srank (of {zp.Config().latent_dim})",
                            ylim=(0, zp.Config().latent_dim + 1))
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    # One report per task, and one over all: the return scale is the same on every task, so pooling is meaningful.
    write_reports(out, results.scores(), {**{task: [task] for task in tasks}, **({"all": tasks} if len(tasks) > 1
                                                                                 else {})})


if __name__ == "__main__":
    main()
