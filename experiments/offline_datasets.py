"""Generate D4RL-style offline datasets from rlzoo's own behaviour policies.

    python -m rlzoo.experiments.offline_datasets --env-id Pendulum-v1 --out datasets/
    python -m rlzoo.experiments.offline_datasets --env-id brax/hopper --out datasets/ --tier-size 1000000
    python -m rlzoo.experiments.offline_datasets --help

D4RL and Minari cannot be downloaded everywhere, so rlzoo makes its own tiers
(Fu et al., 2020, section 5), each written as `<out>/<env>/<tier>.hdf5` with
`rlzoo.datasets.save` (the D4RL keys plus metadata and a checksum):

- `random`: uniformly random actions in the action bounds;
- `expert`: the behaviour learner's final policy;
- `medium`: the trained snapshot (neither the untrained first nor the last) whose
  evaluated normalised score is closest to `medium_score` (default 40: between a
  third and a half of the way from random to expert);
- `medium-replay`: what training saw on its way to `medium`: every snapshot up to
  and including it, each recorded by an equal share of the `num_envs` envs
  (rounded down, at least one) for as many steps as the other tiers.
  (PPO is on-policy and throws each rollout away, so the replay is re-recorded
  from the saved snapshots rather than kept; a snapshot is the policy that
  collected the next chunk of training data);
- `medium-expert`: `medium` followed by `expert` (twice `tier_size`, as in D4RL).

Every policy samples its actions (as behaviour policies do); the reference
returns for normalised scores are the mean episode return of the `random` tier
(`ref_min_score`) and of the `expert` tier (`ref_max_score`), stored in every
tier's metadata: D4RL's constants do not apply to gymnax or brax returns.

Recording is one jitted `lax.scan` over steps of `num_envs` environments stepped
with `vmap` (`rlzoo.env_adapter.VecEnv`); each env's stream is contiguous in the
file and its last transition is marked as a timeout where the recording cut an
episode. The behaviour learner is pluggable (`BEHAVIOUR_LEARNERS`: PPO, or SAC,
which needs far fewer brax env steps): any algorithm's `make_train(config)` whose
`Trainer.act` samples actions will do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo import datasets
from rlzoo.trainer import ConfigError, Trainer, check
from rlzoo.env_adapter import Env, VecEnv
from rlzoo.evaluate import evaluate
from rlzoo.logging import ProgressBar

TIERS = ("random", "medium", "expert", "medium-replay", "medium-expert")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Which datasets to write, and how to train the behaviour policy (the CLI)."""

    env_id: str = "Pendulum-v1"
    """Environment: a gymnax id with continuous actions or brax/<name> (hopper, halfcheetah, walker2d)."""
    out: str = "datasets"
    """Folder; each tier is written as <out>/<env>/<tier>.hdf5."""
    tiers: tuple[str, ...] = TIERS
    """Tiers to write (random and expert are always recorded: they give the reference returns)."""
    tier_size: int = 100_000
    """Transitions per tier (medium-expert has twice as many)."""
    num_envs: int = 100
    """Environments recorded in parallel; must divide tier_size."""
    seed: int = 0
    """Seed of the behaviour training and of the recordings."""
    learner: str = "ppo"
    """Behaviour learner, a key of BEHAVIOUR_LEARNERS."""
    behaviour_timesteps: int = 0
    """Environment steps of behaviour training (0: the learner's default for this env)."""
    behaviour_num_envs: int = 0
    """Parallel environments of behaviour training (0: the learner's default for this env)."""
    behaviour_utd_ratio: int = 0
    """Gradient steps per vectorised env step of an off-policy learner (0: its default; sac only)."""
    num_snapshots: int = 33
    """Policy snapshots: the untrained policy, then one after each equal share of training (all but the first and
    last are medium candidates)."""
    medium_score: float = 40.0
    """Normalised score (0 random, 100 expert) the medium snapshot is chosen closest to."""
    eval_episodes: int = 16
    """Episodes that evaluate each snapshot."""
    brax_backend: str = "positional"
    """Physics backend for brax/<name> ids."""

    def __post_init__(self):
        unknown = [t for t in self.tiers if t not in TIERS]
        check(not unknown, "tiers", self.tiers, f"each one of {', '.join(TIERS)}")
        check(self.tier_size >= 1, "tier_size", self.tier_size, "must be >= 1")
        check(self.num_envs >= 1 and self.tier_size % self.num_envs == 0, "num_envs", self.num_envs,
              f"must be >= 1 and divide tier_size ({self.tier_size})")
        check(self.learner in BEHAVIOUR_LEARNERS, "learner", self.learner, f"one of {', '.join(BEHAVIOUR_LEARNERS)}")
        check(self.behaviour_timesteps >= 0, "behaviour_timesteps", self.behaviour_timesteps, "must be >= 0")
        check(self.behaviour_num_envs >= 0, "behaviour_num_envs", self.behaviour_num_envs, "must be >= 0")
        check(self.behaviour_utd_ratio >= 0 and (self.behaviour_utd_ratio == 0 or self.learner == "sac"),
              "behaviour_utd_ratio", self.behaviour_utd_ratio, "must be >= 0, and 0 unless learner is sac")
        check(self.num_snapshots >= 3, "num_snapshots", self.num_snapshots,
              "must be >= 3 (untrained, at least one medium candidate, expert)")
        check(0.0 < self.medium_score < 100.0, "medium_score", self.medium_score, "must lie in (0, 100)")
        check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "must be >= 1")


# --------------------------------------------------------------------------- behaviour learners


def ppo_learner(generate: GenerateConfig) -> tuple[Trainer, Any]:
    """PPO with the settings that learn Pendulum-v1 in tests, or PureJaxRL's brax settings."""
    from rlzoo.algorithms import ppo

    timesteps, num_envs = generate.behaviour_timesteps, generate.behaviour_num_envs
    if generate.env_id.startswith("brax/"):
        config = ppo.Config(env_id=generate.env_id, total_timesteps=timesteps or 20_000_000,
                            num_envs=num_envs or 2048, num_steps=10, num_minibatches=32, hidden_sizes=(256, 256),
                            brax_backend=generate.brax_backend)
        hparams = ppo.HParams(lr=3e-4, ent_coef=0.0)
    else:
        config = ppo.Config(env_id=generate.env_id, total_timesteps=timesteps or 131_072, num_envs=num_envs or 32,
                            num_steps=64, num_epochs=10, num_minibatches=8)
        hparams = ppo.HParams(lr=1e-3, gamma=0.95, ent_coef=0.0)
    return ppo.make_train(config), hparams


def sac_learner(generate: GenerateConfig) -> tuple[Trainer, Any]:
    """SAC with the brax settings of `benchmarks/bench_offpolicy.py` (16 envs, 2 gradient steps per vectorised step),
    or its Pendulum-v1 defaults; far fewer env steps than PPO for the same return on brax.

    The snapshots hold SAC's replay buffer, so keep `num_snapshots` small (about 10) at a 1M-transition buffer.
    """
    from rlzoo.algorithms import sac

    timesteps, num_envs, utd = generate.behaviour_timesteps, generate.behaviour_num_envs, generate.behaviour_utd_ratio
    if generate.env_id.startswith("brax/"):
        steps = timesteps or 1_000_000
        config = sac.Config(env_id=generate.env_id, total_timesteps=steps, num_envs=num_envs or 16,
                            utd_ratio=utd or 2, learning_starts=5_000, buffer_size=min(max(steps, 100_000), 1_000_000),
                            brax_backend=generate.brax_backend)
    else:
        defaults = sac.Config()
        config = sac.Config(env_id=generate.env_id, total_timesteps=timesteps or 20_000,
                            num_envs=num_envs or defaults.num_envs, utd_ratio=utd or defaults.utd_ratio)
    return sac.make_train(config), sac.HParams()


BEHAVIOUR_LEARNERS: dict[str, Callable[[GenerateConfig], tuple[Trainer, Any]]] = {"ppo": ppo_learner,
                                                                                  "sac": sac_learner}


class BehaviourRun(NamedTuple):
    """Snapshots of a behaviour learner's training state, oldest first, with their evaluation."""

    trainer: Trainer
    snapshots: list[Any]  # training states; snapshots[-1] is the expert
    env_steps: list[int]  # environment steps of training behind each snapshot
    eval_returns: np.ndarray  # [num_snapshots] mean return of each snapshot's sampling policy
    train_s: float


def train_behaviour(config: GenerateConfig,
                    on_snapshot: Callable[[int, int, float, float], None] | None = None) -> BehaviourRun:
    """Trains the behaviour learner, saving `num_snapshots` snapshots at equal intervals (the first untrained).

    The intervals are `num_updates // (num_snapshots - 1)` updates each; the
    remaining updates, fewer than `num_snapshots - 1`, are not run.
    `on_snapshot(env_steps, total_env_steps, eval_return, seconds)` is called after each snapshot (progress).
    """
    trainer, hparams = BEHAVIOUR_LEARNERS[config.learner](config)
    intervals = config.num_snapshots - 1
    per_interval = trainer.num_updates // intervals  # equal intervals: one compiled program; the remainder is not run
    if per_interval < 1:
        raise ConfigError(f"behaviour_timesteps={config.behaviour_timesteps} is not allowed: {trainer.num_updates} "
                          f"updates cannot be split into {intervals} intervals between snapshots")
    start = time.perf_counter()
    state = jax.jit(trainer.init)(jax.random.PRNGKey(config.seed), hparams)
    run = jax.jit(lambda s: trainer.run(s, hparams, per_interval)[0])
    max_steps = trainer.eval_env.spec.max_episode_steps or 1000
    score = jax.jit(lambda s, key: evaluate(lambda k, obs: trainer.act(s, k, obs, False), trainer.eval_env, key,
                                            config.eval_episodes, max_steps).episode_return.mean())
    # One program in flight at a time: with training and scoring dispatched together, XLA CPU (jax 0.10.2, 2 cores)
    # once deadlocked here, every thread idle and the host waiting in Execute's in-flight semaphore.
    snapshots, env_steps = [state], [0]
    returns = [float(score(state, jax.random.PRNGKey(config.seed + 1)))]
    steps_per_interval = per_interval * trainer.env_steps_per_update
    for i in range(intervals):
        state = jax.block_until_ready(run(state))
        snapshots.append(state)
        env_steps.append((i + 1) * steps_per_interval)
        returns.append(float(score(state, jax.random.PRNGKey(config.seed + 2 + i))))
        if on_snapshot is not None:
            on_snapshot(env_steps[-1], intervals * steps_per_interval, returns[-1], time.perf_counter() - start)
    returns = np.asarray(returns, np.float64)
    return BehaviourRun(trainer, snapshots, env_steps, returns, time.perf_counter() - start)


# --------------------------------------------------------------------------- recording


class Recording(NamedTuple):
    arrays: dict[str, np.ndarray]  # the D4RL keys, env streams one after another
    return_sum: float  # sum and count of the episodes finished while recording
    episodes: int
    seconds: float  # recording time, without compilation

    @property
    def policy_return(self) -> float:
        return self.return_sum / max(self.episodes, 1)


def record(act: Callable[[jax.Array, jax.Array], jax.Array], env: Env, key: jax.Array, num_envs: int,
           num_steps: int) -> tuple[datasets.Dataset, jax.Array, jax.Array]:
    """`num_steps` steps of `num_envs` envs under `act(key, obs)`: transitions [num_envs * num_steps] and episodes.

    Returns (transitions with each env's stream contiguous, sum of the returns of
    the episodes finished, their count). The last step of each stream is marked as a
    timeout unless it was terminal: the recording cut the episode there.
    """
    vec_env = VecEnv(env, num_envs, clip_actions=True)
    reset_key, run_key = jax.random.split(key)
    env_state, obs = vec_env.reset(reset_key)
    low, high = env.spec.action_low, env.spec.action_high

    def step(carry, key):
        env_state, obs = carry
        act_key, env_key = jax.random.split(key)
        action = jnp.clip(act(act_key, obs), low, high)
        env_state, ts = vec_env.step(env_key, env_state, action)
        done = ts.terminated | ts.truncated
        transition = datasets.Dataset(obs, action, ts.reward, ts.final_obs, ts.terminated, ts.truncated)
        return (env_state, ts.obs), (transition, jnp.where(done, ts.episode_return, 0.0).sum(), done.sum())

    _, (steps, return_sums, counts) = jax.lax.scan(step, (env_state, obs), jax.random.split(run_key, num_steps))
    steps = steps._replace(timeouts=steps.timeouts.at[-1].set(~steps.terminals[-1]))
    env_major = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(num_envs * num_steps, *x.shape[2:]), steps)
    return env_major, return_sums.sum(), counts.sum()


def uniform_policy(env: Env) -> Callable[[jax.Array, jax.Array], jax.Array]:
    low, high, shape = env.spec.action_low, env.spec.action_high, env.spec.action_shape
    return lambda key, obs: jax.random.uniform(key, (obs.shape[0], *shape), minval=low, maxval=high)


class Recorder:
    """Records policies given as training states, compiling once per (kind, steps) and timing runs without it."""

    def __init__(self, trainer: Trainer, num_envs: int):
        """`num_envs`: the default number of envs recorded in parallel."""
        self.trainer, self.num_envs, self.compiled = trainer, num_envs, {}

    def _program(self, with_state: bool, num_envs: int, num_steps: int, example_state: Any):
        env = self.trainer.eval_env
        if with_state:
            def program(state, key):
                policy = lambda k, obs: self.trainer.act(state, k, obs, False)  # noqa: E731
                return record(policy, env, key, num_envs, num_steps)
        else:
            def program(state, key):
                return record(uniform_policy(env), env, key, num_envs, num_steps)
        signature = (with_state, num_envs, num_steps)
        if signature not in self.compiled:
            self.compiled[signature] = jax.jit(program).lower(example_state, jax.random.PRNGKey(0)).compile()
        return self.compiled[signature]

    def __call__(self, state: Any | None, key: jax.Array, num_steps: int, num_envs: int | None = None) -> Recording:
        program = self._program(state is not None, num_envs or self.num_envs, num_steps, state)
        start = time.perf_counter()
        steps, return_sum, episodes = jax.block_until_ready(program(state, key))
        seconds = time.perf_counter() - start
        arrays = {k: np.asarray(v) for k, v in steps._asdict().items()}
        return Recording(arrays, float(return_sum), int(episodes), seconds)


def concatenate(recordings: list[Recording]) -> Recording:
    arrays = {k: np.concatenate([r.arrays[k] for r in recordings]) for k in datasets.KEYS}
    return Recording(arrays, sum(r.return_sum for r in recordings), sum(r.episodes for r in recordings),
                     sum(r.seconds for r in recordings))


# --------------------------------------------------------------------------- the command


def choose_medium(eval_returns: np.ndarray, refs: dict[str, float], target_score: float) -> int:
    """Index of the trained snapshot (not the untrained first, not the last, the expert) whose normalised score is
    closest to `target_score`.

    The untrained policy is no candidate: on brax/hopper SAC's initial policy (actions near 0, sampled) stands
    for about 400 steps and scored 57 against uniform actions' 0, so it would have been "medium".
    """
    scores = datasets.normalized_score(refs, eval_returns[1:-1])
    return 1 + int(np.argmin(np.abs(scores - target_score)))


def reference_returns(config: GenerateConfig, random_return: float, expert_return: float) -> dict[str, float]:
    """D4RL's reference returns; refused unless the expert beats uniform actions (else scores are undefined).

    SAC after 1e5 steps on brax/walker2d scored 232 against uniform actions' 254: its walker falls sooner
    than a random one, which collects the healthy reward for longer.
    """
    if not expert_return > random_return:
        raise ConfigError(
            f"behaviour_timesteps={config.behaviour_timesteps} is not allowed for {config.env_id}: the expert "
            f"(the {config.learner} learner's final policy) returned {expert_return:.1f}, not more than uniform "
            f"random actions' {random_return:.1f}, so normalised scores (0 random, 100 expert) are undefined; "
            "train the behaviour learner longer")
    return {"ref_min_score": random_return, "ref_max_score": expert_return}


def generate(config: GenerateConfig, behaviour: BehaviourRun | None = None) -> dict[str, dict[str, Any]]:
    """Records and writes the tiers of `config.tiers`; returns each tier's metadata (with its `path`).

    `behaviour` (from `train_behaviour(config)`) is trained here when not given.
    """
    behaviour = behaviour or train_behaviour(config)
    trainer = behaviour.trainer
    env = trainer.eval_env
    check(not env.spec.discrete, "env_id", config.env_id, "offline datasets need continuous actions")
    recorder = Recorder(trainer, config.num_envs)
    keys = dict(zip(("random", "medium", "expert", "medium-replay"),
                    jax.random.split(jax.random.PRNGKey(config.seed + 1000), 4)))
    steps = config.tier_size // config.num_envs
    expert_state = behaviour.snapshots[-1]

    random = recorder(None, keys["random"], steps)
    expert = recorder(expert_state, keys["expert"], steps)
    for tier, recording in (("random", random), ("expert", expert)):
        if recording.episodes == 0:
            raise ConfigError(f"tier_size={config.tier_size} is not allowed with num_envs={config.num_envs}: "
                              f"{steps} steps per env finished no {tier} episode of {config.env_id}, so there is no "
                              "reference return; raise tier_size or lower num_envs")
    refs = reference_returns(config, random.policy_return, expert.policy_return)
    medium_index = choose_medium(behaviour.eval_returns, refs, config.medium_score)
    recordings: dict[str, Recording] = {"random": random, "expert": expert}
    if {"medium", "medium-expert"} & set(config.tiers):
        recordings["medium"] = recorder(behaviour.snapshots[medium_index], keys["medium"], steps)
    if "medium-expert" in config.tiers:
        recordings["medium-expert"] = concatenate([recordings["medium"], expert])
    if "medium-replay" in config.tiers:
        # Whole-length streams from fewer envs per snapshot, so that each share holds complete episodes.
        envs_per_snapshot = max(config.num_envs // (medium_index + 1), 1)
        recordings["medium-replay"] = concatenate([
            recorder(behaviour.snapshots[i], jax.random.fold_in(keys["medium-replay"], i), steps, envs_per_snapshot)
            for i in range(medium_index + 1)])

    folder = Path(config.out) / config.env_id.replace("/", "-")
    written = {}
    for tier in config.tiers:
        recording = recordings[tier]
        policy_index = {"random": None, "expert": len(behaviour.snapshots) - 1}.get(tier, medium_index)
        metadata = {
            "env_id": config.env_id,
            "backend": config.brax_backend if config.env_id.startswith("brax/") else None,
            "tier": tier,
            "policy_return": recording.policy_return,
            "policy_episodes": recording.episodes,
            "behaviour_learner": config.learner,
            "behaviour_env_steps": None if policy_index is None else behaviour.env_steps[policy_index],
            "behaviour_eval_returns": behaviour.eval_returns.tolist(),
            **refs,
            "seed": config.seed,
            "num_envs": config.num_envs,
            "transitions_per_s": recording.arrays["rewards"].shape[0] / recording.seconds,
        }
        path = folder / f"{tier}.hdf5"
        written[tier] = {**datasets.save(path, recording.arrays, metadata), "path": str(path)}
    return written


def main(args: list[str] | None = None) -> None:
    import sys

    import tyro

    try:
        config = tyro.cli(GenerateConfig, args=args, description=__doc__.split("\n\n")[0])
        bar = None

        def show(env_steps: int, total: int, eval_return: float, seconds: float) -> None:
            nonlocal bar
            bar = bar or ProgressBar(total, f"behaviour {config.learner} on {config.env_id}")
            bar.update(env_steps, env_steps / seconds, eval_return)

        behaviour = train_behaviour(config, show)
        if bar is not None:
            bar.close()
        print(f"behaviour {config.learner}: {behaviour.env_steps[-1]:,} env steps in {behaviour.train_s:.1f}s; "
              f"snapshot returns {np.round(behaviour.eval_returns, 1).tolist()}")
        for metadata in generate(config, behaviour).values():
            score = datasets.normalized_score(metadata, metadata["policy_return"])
            print(f"{metadata['path']}: {metadata['num_transitions']:,} transitions, policy return "
                  f"{metadata['policy_return']:.1f} (normalised {score:.1f}), "
                  f"{metadata['transitions_per_s']:,.0f} transitions/s")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
