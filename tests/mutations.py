"""Mutation check: deliberate bugs that the test suite must catch.

    .venv/bin/python tests/mutations.py                  # every mutation, then a table (about 20 min on 2 cores)
    .venv/bin/python tests/mutations.py --list           # the mutations and the tests that guard each
    .venv/bin/python tests/mutations.py --only sac-actor-sign ppo-final-obs

For each mutation the working tree (tracked and untracked, not ignored files) is
copied into a scratch folder, the one change is applied there (its text must occur
exactly once in the file, so a refactor that moves the line breaks the check loudly
rather than testing nothing), and the test files that guard that code run on the
copy with `-x`. The mutation is *caught* when pytest fails. First the same test files
run on an unmodified copy: they must pass there, or a catch would mean nothing.

The copy is importable as `rlzoo` on its own: `rlzoo/algorithms`, `rlzoo/envs`,
`rlzoo/experiments` and `rlzoo/benchmarks` are links to the copied folders, and
PYTHONPATH puts the copy ahead of the editable install. The source tree is never
touched. Exit status 1 when a mutation survives or the unmodified copy fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = {"algorithms": "algorithms", "envs": "envs", "experiments": "experiments", "benchmarks": "benchmarks"}


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # what a careless edit would do, in words
    path: str  # relative to the repository root
    old: str  # must occur exactly once in `path`
    new: str
    tests: tuple[str, ...]  # test files or node ids (cheapest first: pytest stops at the first failure)


PPO_PROBES = "tests/test_ppo.py::test_ppo_learns_the_closed_form_values_of_the_probe_envs"
DQN_PROBES = "tests/test_dqn.py::test_dqn_learns_the_closed_form_values_of_the_probe_envs"
IQN_LOSSES = ("tests/test_iqn.py::"
              "test_iterated_loss_of_separate_networks_regresses_each_q_k_on_the_target_of_q_bar_k_minus_1")

MUTATIONS = (
    # ---- a sign flip in each loss
    Mutation("ppo-surrogate-sign", "PPO maximises the clipped surrogate's negative", "algorithms/ppo.py",
             "policy_loss = -jnp.minimum(", "policy_loss = jnp.minimum(", ("tests/test_ppo_loss.py",)),
    Mutation("ppo-entropy-sign", "PPO's entropy bonus becomes a penalty", "algorithms/ppo.py",
             "- hp.ent_coef * entropy", "+ hp.ent_coef * entropy", ("tests/test_ppo_loss.py",)),
    Mutation("dqn-td-sign", "DQN's target enters with the wrong sign", "algorithms/dqn.py",
             "y = sample.returns + sample.discount * to_q(next_taken)",
             "y = sample.returns - sample.discount * to_q(next_taken)", ("tests/test_dqn_loss.py",)),
    Mutation("sac-actor-sign", "SAC's actor minimises Q", "algorithms/sac.py",
             "jnp.mean(alpha * log_prob - q_fn(obs, action).min(axis=0))",
             "jnp.mean(alpha * log_prob + q_fn(obs, action).min(axis=0))", ("tests/test_offpolicy_losses.py",)),
    Mutation("sac-temperature-sign", "SAC's temperature moves away from the target entropy", "algorithms/sac.py",
             "return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))",
             "return jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))",
             ("tests/test_offpolicy_losses.py",)),
    Mutation("critic-loss-sign", "the twin critics ascend their Bellman error", "rlzoo/off_policy.py",
             "return jnp.sum(jnp.mean(0.5 * jnp.square(q - target), axis=-1)), jnp.mean(q)",
             "return -jnp.sum(jnp.mean(0.5 * jnp.square(q - target), axis=-1)), jnp.mean(q)",
             ("tests/test_offpolicy_losses.py",)),
    Mutation("td3-actor-sign", "TD3's actor minimises Q_1", "algorithms/td3.py",
             "return -jnp.mean(q_fn(obs, actor.apply(actor_params, obs))[0])",
             "return jnp.mean(q_fn(obs, actor.apply(actor_params, obs))[0])", ("tests/test_offpolicy_losses.py",)),
    Mutation("bc-sign", "BC minimises the data's likelihood", "algorithms/bc.py",
             "loss = -log_prob.mean()", "loss = log_prob.mean()", ("tests/test_offline_losses.py",)),
    Mutation("iql-expectile-sign", "IQL's expectile weights swap sides", "algorithms/iql.py",
             "weight = jnp.where(diff < 0, 1.0 - expectile, expectile)",
             "weight = jnp.where(diff > 0, 1.0 - expectile, expectile)", ("tests/test_offline_losses.py",)),
    Mutation("iql-actor-sign", "IQL's weighted regression pushes away from the data", "algorithms/iql.py",
             "loss = -(weights * log_prob).mean()", "loss = (weights * log_prob).mean()",
             ("tests/test_offline_losses.py",)),
    Mutation("td3bc-actor-sign", "TD3+BC's actor minimises Q", "algorithms/td3_bc.py",
             "loss = -lam * q.mean() + bc", "loss = lam * q.mean() + bc", ("tests/test_offline_losses.py",)),
    Mutation("csve-critic-sign", "CSVE's critic target flips the reward's sign", "algorithms/csve.py",
             "target = jax.lax.stop_gradient(batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_v)",
             "target = jax.lax.stop_gradient(-batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_v)",
             ("tests/test_offline_losses.py",)),
    Mutation("csve-penalty-sign", "CSVE rewards a value gap instead of penalising it", "algorithms/csve.py",
             "penalty = jax.lax.stop_gradient(alpha_of(learner.log_alpha)) * (hp.gap_coef * gap - hp.gap_threshold)",
             "penalty = -jax.lax.stop_gradient(alpha_of(learner.log_alpha)) * (hp.gap_coef * gap - hp.gap_threshold)",
             ("tests/test_offline_losses.py",)),
    Mutation("zp-rl-sign", "ZP's latent DQN target enters with the wrong sign", "algorithms/zp.py",
             "y = first.reward + hp.gamma * (1.0 - first.terminated.astype(jnp.float32)) * jnp.max(next_q, axis=-1)",
             "y = first.reward - hp.gamma * (1.0 - first.terminated.astype(jnp.float32)) * jnp.max(next_q, axis=-1)",
             ("tests/test_representation_losses.py",)),
    Mutation("spr-cosine-sign", "SPR maximises its prediction error", "algorithms/spr.py",
             "return 2.0 - 2.0 * jnp.sum(normalise(prediction) * normalise(target), axis=-1)",
             "return 2.0 + 2.0 * jnp.sum(normalise(prediction) * normalise(target), axis=-1)",
             ("tests/test_representation_losses.py",)),
    # ---- a discount that ignores termination
    Mutation("offpolicy-discount-ignores-termination", "SAC/TD3/i-SAC bootstrap through terminal states",
             "rlzoo/off_policy.py", "return batch, gamma * (1.0 - batch.terminated.astype(jnp.float32))",
             "return batch, gamma * jnp.ones_like(batch.reward)", ("tests/test_offpolicy_losses.py",)),
    Mutation("gae-ignores-termination", "PPO's advantages bootstrap through terminal states", "rlzoo/returns.py",
             "deltas = rewards + gamma * (1.0 - term) * next_values - values",
             "deltas = rewards + gamma * next_values - values", ("tests/test_returns.py", PPO_PROBES)),
    Mutation("iql-discount-ignores-termination", "IQL's critic bootstraps through terminal states", "algorithms/iql.py",
             "target = reward_scale * batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_v",
             "target = reward_scale * batch.rewards + hp.gamma * next_v", ("tests/test_offline_losses.py",)),
    Mutation("cql-discount-ignores-termination", "CQL's critic bootstraps through terminal states", "algorithms/cql.py",
             "target = jax.lax.stop_gradient(batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_q)",
             "target = jax.lax.stop_gradient(batch.rewards + hp.gamma * next_q)", ("tests/test_offline_losses.py",)),
    Mutation("td3bc-discount-ignores-termination", "TD3+BC's critic bootstraps through terminal states",
             "algorithms/td3_bc.py",
             "target = jax.lax.stop_gradient(batch.rewards + hp.gamma * (1.0 - batch.terminals) * next_q)",
             "target = jax.lax.stop_gradient(batch.rewards + hp.gamma * next_q)", ("tests/test_offline_losses.py",)),
    Mutation("zp-discount-ignores-termination", "ZP's latent DQN bootstraps through terminal states",
             "algorithms/zp.py", "hp.gamma * (1.0 - first.terminated.astype(jnp.float32)) * jnp.max(",
             "hp.gamma * jnp.max(", ("tests/test_representation_losses.py",)),
    # ---- truncation treated as termination; the reset observation stored as the next one
    Mutation("truncation-as-termination", "every online learner stops bootstrapping at a time limit",
             "rlzoo/env_adapter.py",
             "return new, TimeStep(obs, reward, terminated, truncated, final_obs, episode_return, episode_length)",
             "return new, TimeStep(obs, reward, terminated | truncated, truncated, final_obs, episode_return, "
             "episode_length)", ("tests/test_offpolicy_losses.py", DQN_PROBES, PPO_PROBES)),
    Mutation("replay-stores-reset-obs", "replay learners bootstrap from the next episode's first observation",
             "rlzoo/replay.py",
             "transition = Transition(state.obs, action, step.reward, step.terminated, step.truncated, step.final_obs)",
             "transition = Transition(state.obs, action, step.reward, step.terminated, step.truncated, step.obs)",
             ("tests/test_offpolicy_losses.py", DQN_PROBES)),
    Mutation("ppo-bootstraps-reset-obs", "PPO values a truncated episode's end by the next episode's start",
             "algorithms/ppo.py", "ts.terminated, ts.truncated, ts.final_obs)", "ts.terminated, ts.truncated, ts.obs)",
             (PPO_PROBES,)),
    # ---- target updates turned off
    Mutation("polyak-off", "no target network ever moves (Polyak and hard copies)", "rlzoo/updates.py",
             "return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)",
             "return jax.tree.map(lambda t, o: t, target, online)",
             ("tests/test_dqn_loss.py", "tests/test_offpolicy_losses.py", "tests/test_representation_losses.py")),
    Mutation("dqn-target-never-due", "DQN's periodic target refresh never happens", "rlzoo/updates.py",
             "return step % jnp.asarray(period).astype(jnp.int32) == 0",
             "return step % jnp.asarray(period).astype(jnp.int32) == -1", ("tests/test_dqn_loss.py",)),
    Mutation("nstep-discount-ignores-termination", "DQN-family n-step targets bootstrap through terminal states",
             "rlzoo/returns.py", "gamma_k * (1.0 - (jnp.asarray(terminated[k]) != 0).astype(dtype))",
             "gamma_k * jnp.ones_like(returns)", ("tests/test_returns.py", DQN_PROBES)),
    # ---- beyond the list: other plausible one-line bugs, each in a different part of a learner
    Mutation("ppo-no-ratio-clip", "PPO's surrogate loses its clip", "algorithms/ppo.py",
             "jnp.clip(ratio, 1 - hp.clip_eps, 1 + hp.clip_eps) * advantage).mean()",
             "ratio * advantage).mean()", ("tests/test_ppo_loss.py",)),
    Mutation("ppo-value-clip-min", "PPO's clipped value loss takes the smaller error", "algorithms/ppo.py",
             "value_error = jnp.maximum(value_error, jnp.square(clipped - batch.target))",
             "value_error = jnp.minimum(value_error, jnp.square(clipped - batch.target))", ("tests/test_ppo_loss.py",)),
    Mutation("double-dqn-off", "--double silently selects a' with the target network", "algorithms/dqn.py",
             "selector = network.apply(params, next_obs) if config.double else next_target_out",
             "selector = next_target_out", ("tests/test_dqn_loss.py",)),
    Mutation("dueling-no-mean", "the dueling head forgets to centre the advantages", "rlzoo/networks.py",
             "return value + advantage - advantage.mean(axis=action_axis, keepdims=True)",
             "return value + advantage", ("tests/test_dqn_loss.py",)),
    Mutation("iqn-targets-from-online", "i-QN bootstraps from its online networks", "algorithms/iqn.py",
             "next_q_bar = iterations.target_q(target_params, next_obs)",
             "next_q_bar = iterations.target_q(params, next_obs)", (IQN_LOSSES,)),
    Mutation("td3-smoothing-unclipped", "TD3's smoothed target action leaves [-1, 1]", "algorithms/td3.py",
             "return jnp.clip(target_action + noise, -1.0, 1.0)", "return target_action + noise",
             ("tests/test_offpolicy_losses.py",)),
    Mutation("isac-heads-share-one-target", "i-SAC regresses every pair on the target of pair 0", "algorithms/isac.py",
             "targets = jax.vmap(lambda q: sac.soft_q_target(batch.reward, discount, q, next_log_prob, alpha))(next_q)",
             "targets = jax.vmap(lambda q: sac.soft_q_target(batch.reward, discount, next_q[0], next_log_prob, "
             "alpha))(next_q)", ("tests/test_offpolicy_losses.py",)),
    Mutation("iql-weights-unclipped", "IQL's advantage weights lose their clip", "algorithms/iql.py",
             "jnp.minimum(jnp.exp(hp.beta * (target_q - v)), hp.max_weight)", "jnp.exp(hp.beta * (target_q - v))",
             ("tests/test_offline_losses.py",)),
    Mutation("td3bc-lambda-signed-q", "TD3+BC normalises by mean Q instead of mean |Q|", "algorithms/td3_bc.py",
             "hp.alpha / jnp.abs(q).mean()", "hp.alpha / q.mean()", ("tests/test_offline_losses.py",)),
    Mutation("cql-temperature-sign", "CQL's SAC temperature moves away from the target entropy", "algorithms/cql.py",
             "alpha_loss = -(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy)).mean()",
             "alpha_loss = (log_alpha * jax.lax.stop_gradient(log_prob + target_entropy)).mean()",
             ("tests/test_offline_losses.py",)),
    # ---- the offline learners' own switches
    Mutation("td3bc-alpha-zero", "TD3+BC's Q term vanishes (pure behaviour cloning)", "algorithms/td3_bc.py",
             "lam = jax.lax.stop_gradient(hp.alpha / jnp.abs(q).mean())",
             "lam = jax.lax.stop_gradient(0.0 * hp.alpha / jnp.abs(q).mean())",
             ("tests/test_offline_losses.py", "tests/test_offline_baselines.py")),
    Mutation("cql-regulariser-sign", "CQL pushes Q up on unseen actions", "algorithms/cql.py",
             "        regulariser = hp.min_q_weight * gap.sum()", "        regulariser = -hp.min_q_weight * gap.sum()",
             ("tests/test_offline_losses.py", "tests/test_offline_baselines.py")),
)


def scratch_copy(destination: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) under `destination`, importable as rlzoo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for name, folder in SUBPACKAGES.items():
        (destination / "rlzoo" / name).symlink_to(destination / folder, target_is_directory=True)


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: the text to change occurs {count} times in {mutation.path} "
                         f"(must be exactly once); update MUTATIONS after a refactor")
    path.write_text(text.replace(mutation.old, mutation.new))


def run_tests(tree: Path, tests: tuple[str, ...], timeout_s: int) -> tuple[bool, float, str]:
    """(passed, seconds, last lines of output) of pytest on `tests` in `tree`, stopping at the first failure."""
    env = {**os.environ, "PYTHONPATH": str(tree), "RLZOO_TEST_JAX_CACHE": str(ROOT / ".jax_cache")}
    start = time.perf_counter()
    try:
        process = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                 cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s)
        passed, output = process.returncode == 0, process.stdout + process.stderr
    except subprocess.TimeoutExpired:
        passed, output = False, f"timed out after {timeout_s} s"
    return passed, time.perf_counter() - start, "\n".join(output.strip().splitlines()[-3:])


def check_imports_the_copy(tree: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run([sys.executable, "-c", "import rlzoo.algorithms.ppo as m, rlzoo; print(m.__file__)"],
                           cwd=tree, env=env, check=True, capture_output=True, text=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the scratch copy is not what gets imported: rlzoo.algorithms.ppo comes from {found}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="names of the mutations to run")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    by_name = {m.name: m for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        raise SystemExit(f"--only: unknown mutation(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.path:24s} {m.bug}\n{'':40s} guarded by {', '.join(m.tests)}")
        return

    results, survived = [], []
    with tempfile.TemporaryDirectory(prefix="rlzoo-mutations-") as scratch:
        baseline = Path(scratch) / "baseline"
        scratch_copy(baseline)
        check_imports_the_copy(baseline)
        guard_files = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        passed, seconds, tail = run_tests(baseline, guard_files, args.timeout)
        print(f"unmodified copy: {'passes' if passed else 'FAILS'} ({seconds:.0f} s) on {' '.join(guard_files)}")
        if not passed:
            raise SystemExit(f"the guarding tests fail without any mutation, so no catch would mean anything:\n{tail}")
        for mutation in chosen:
            tree = Path(scratch) / mutation.name
            scratch_copy(tree)
            apply(mutation, tree)
            passed, seconds, tail = run_tests(tree, mutation.tests, args.timeout)
            caught = not passed
            results.append({"name": mutation.name, "bug": mutation.bug, "caught": caught, "seconds": round(seconds),
                            "tests": list(mutation.tests), "evidence": tail.splitlines()[-1] if tail else ""})
            print(f"{'caught  ' if caught else 'SURVIVED'} {mutation.name:40s} {seconds:5.0f} s  "
                  f"{results[-1]['evidence'][:90]}", flush=True)
            if not caught:
                survived.append(mutation.name)
            shutil.rmtree(tree)
    print(f"\n{len(results) - len(survived)} of {len(results)} mutations caught"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
