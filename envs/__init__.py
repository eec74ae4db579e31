"""Environments rlzoo writes itself, in the gymnax 1.x API, and `make_env`, the id resolver algorithms use.

`REGISTRY` maps an env id to a zero-argument factory. `make_env(env_id)` builds
any id: ours (looked up here before gymnax), gymnax's, `brax/<name>`, and
`meta/<id>`, which wraps any of them in the meta-RL wrapper of `rlzoo.envs.meta`
(random projections per episode, 4 trials). The adapter itself (`Env`, `VecEnv`)
is core: `rlzoo.env_adapter`. Add a new env by registering its factory here.

Not here: anything that learns (`rlzoo.algorithms`) or combines algorithms
(`rlzoo.experiments`).
"""

import rlzoo
from rlzoo import env_adapter

rlzoo.require_usable_backend()  # before gymnax starts JAX's backend: a clear line for a JAX_PLATFORMS it cannot use
from rlzoo.envs.memory import registry as memory_registry  # noqa: E402
from rlzoo.envs.probes import registry as probe_registry  # noqa: E402
from rlzoo.envs.random_walk import RandomWalk  # noqa: E402

REGISTRY = {
    "RandomWalk19-v0": lambda: RandomWalk(19),
    **memory_registry(),  # POPGym memory tasks: RepeatPrevious-Easy, StatelessCartPole-Hard, ...
    **probe_registry(),  # two-state tasks with closed-form values: ProbeTerminate-v0, ProbeTruncateContinuous-v0, ...
}
META_PREFIX = "meta/"


def make_env(env_id: str, *, backend: str = "positional", max_episode_steps: int | None = None) -> env_adapter.Env:
    """A single `Env` for any id rlzoo knows (module docstring); errors name the id and what is allowed."""
    if env_id.startswith(META_PREFIX):
        from rlzoo.envs.meta import MetaRLEnv

        return MetaRLEnv(make_env(env_id[len(META_PREFIX):], backend=backend, max_episode_steps=max_episode_steps))
    return env_adapter.make_env(env_id, backend=backend, max_episode_steps=max_episode_steps, registry=REGISTRY)


def known_env_ids() -> list[str]:
    """Every id `make_env` accepts except `brax/<name>` (listed by brax) and `meta/<id>` (any of these)."""
    return env_adapter.known_env_ids(REGISTRY)


__all__ = ["META_PREFIX", "REGISTRY", "RandomWalk", "known_env_ids", "make_env"]
