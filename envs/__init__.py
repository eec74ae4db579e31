"""Environments rlzoo writes itself, in the gymnax 1.x API.

`REGISTRY` maps an env id to a zero-argument factory; `rlzoo.env_adapter.make_env`
looks ids up here before gymnax. Add a new env by registering its factory.
"""

from rlzoo.envs.memory import registry as memory_registry
from rlzoo.envs.random_walk import RandomWalk

REGISTRY = {
    "RandomWalk19-v0": lambda: RandomWalk(19),
    **memory_registry(),  # POPGym memory tasks: RepeatPrevious-Easy, StatelessCartPole-Hard, ...
}

__all__ = ["REGISTRY", "RandomWalk"]
