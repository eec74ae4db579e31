"""JAX environment packages behind `<backend>/<native id>` ids, each an optional extra.

- `craftax/<id>` (Craftax-Classic-Symbolic-v1, Craftax-Symbolic-v1, their -Pixels-v1): death (and
  lava, beating the boss) terminates; the 10,000-step limit truncates.
- `navix/<id>` (Navix-Empty-5x5-v0, ...): MiniGrid tasks; the step limit truncates.
- `xminigrid/<id>` (MiniGrid-Empty-5x5, ...): single-task rulesets; discount 0 terminates, the step
  limit truncates.
- `jumanji/<id>` (Snake-v1, Game2048-v1, RubiksCube-v0, ...): action masks; multi-discrete actions
  flattened into one index.
- `pgx/<id>` (2048, ...): single-player games only; legal-action masks.
- `playground/<id>` (CartpoleBalance, CheetahRun, ... of MuJoCo Playground's DM Control suite): continuous
  actions in [-1, 1], simulated by MJX in JAX; the 1,000-step episode length truncates.

Each package gives a `Native` env here: its own reset and step, without its
auto-reset. `rlzoo.env_adapter.EpisodicEnv` puts rlzoo's auto-reset on top, so that
`terminated` and `truncated` stay apart and `final_obs` is the true last
observation. Observations keep their dtype; a structured observation (jumanji) is
flattened into one float32 vector, its action mask set apart. Envs with action
masks say so in `EnvSpec.action_mask` and give the mask of the observation to act
on with `action_mask(state)`.

Time limits: the package's own where it has one; `max_episode_steps`, when given,
adds rlzoo's limit on top (the earlier one truncates); a package without one
(pgx 2048, jumanji Game2048) gets `DEFAULT_TIME_LIMIT`.

Not here: gymnax and brax (`rlzoo.env_adapter`), host environments.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from rlzoo.trainer import ConfigError

DEFAULT_TIME_LIMIT = 1000  # steps, for packages whose envs have none


@dataclasses.dataclass(frozen=True)
class Native:
    """A package's env as three pure functions of our making (no auto-reset).

    reset(key) -> (inner, obs, mask); step(key, inner, action) -> (inner, obs, reward, terminated, truncated, mask).
    `mask` is the legal-action mask of `obs` ([num_actions] bool) or None where the env has none."""

    reset: Callable[[chex.PRNGKey], tuple[Any, chex.Array, Any]]
    step: Callable[[chex.PRNGKey, Any, chex.Array], tuple[Any, chex.Array, chex.Array, chex.Array, chex.Array, Any]]
    obs_shape: tuple[int, ...]
    num_actions: int  # discrete: the number of actions; continuous: the action dimension
    time_limit: int | None  # the package's own, if it has one
    has_mask: bool = False
    discrete: bool = True
    action_bounds: tuple[float, float] | None = None  # continuous only: the same bounds on every dimension


# --------------------------------------------------------------------------- the packages


def _craftax(name: str) -> Native:
    from craftax.craftax_env import make_craftax_env_from_name

    env = make_craftax_env_from_name(name, auto_reset=False)
    params = env.default_params
    no_time_limit = params.replace(max_timesteps=jnp.iinfo(jnp.int32).max)

    def reset(key):
        obs, inner = env.reset(key, params)
        return inner, obs, None

    def step(key, inner, action):
        obs, inner, reward, done, _ = env.step(key, inner, action, params)
        terminated = env.is_terminal(inner, no_time_limit)  # death, lava, the boss beaten
        return inner, obs, reward, terminated, jnp.logical_and(done, ~terminated), None

    return Native(reset, step, tuple(env.observation_space(params).shape), env.num_actions, int(params.max_timesteps))


CRAFTAX_IDS = ("Craftax-Classic-Symbolic-v1", "Craftax-Classic-Pixels-v1", "Craftax-Symbolic-v1", "Craftax-Pixels-v1")


def _navix(name: str) -> Native:
    import navix

    env = navix.make(name)

    def reset(key):
        timestep = env.reset(key)
        return timestep, timestep.observation, None

    def step(key, timestep, action):
        nxt = env.step(timestep, action)  # a step from a non-final timestep: navix's own reset is never taken
        return nxt, nxt.observation, nxt.reward, nxt.is_termination(), nxt.is_truncation(), None

    return Native(reset, step, tuple(env.observation_space.shape), int(env.action_space.maximum) + 1,
                  int(env.max_steps))


def _navix_ids() -> list[str]:
    import navix

    return sorted(navix.registry())


def _xminigrid(name: str) -> Native:
    import xminigrid

    env, params = xminigrid.make(name)

    def reset(key):
        timestep = env.reset(params, key)
        return timestep, timestep.observation, None

    def step(key, timestep, action):
        nxt = env.step(params, timestep, action)
        last = nxt.last()
        return nxt, nxt.observation, nxt.reward, last & (nxt.discount == 0), last & (nxt.discount > 0), None

    obs_shape = tuple(env.observation_shape(params))
    return Native(reset, step, obs_shape, int(env.num_actions(params)), int(params.max_steps))


def _xminigrid_ids() -> list[str]:
    import xminigrid

    return sorted(xminigrid.registered_environments())


def _flatten_observation(observation: Any) -> tuple[chex.Array, Any]:
    """(obs, mask) of a jumanji observation: a lone array field keeps its dtype, several are flattened and
    concatenated as float32; `action_mask`, where there is one, is set apart."""
    fields = observation._asdict() if hasattr(observation, "_asdict") else dict(vars(observation))
    mask = fields.pop("action_mask", None)
    arrays = [jnp.asarray(v) for v in fields.values()]
    if len(arrays) == 1:
        return arrays[0], mask
    return jnp.concatenate([a.reshape(-1).astype(jnp.float32) for a in arrays]), mask


def _jumanji(name: str) -> Native:
    import jumanji
    from jumanji import specs

    env = jumanji.make(name)
    action_spec = env.action_spec
    if isinstance(action_spec, specs.DiscreteArray):
        sizes: tuple[int, ...] = (int(action_spec.num_values),)
    elif isinstance(action_spec, specs.MultiDiscreteArray):
        sizes = tuple(int(n) for n in jnp.asarray(action_spec.num_values).reshape(-1))
    else:
        raise ConfigError(f"env_id 'jumanji/{name}': its {type(action_spec).__name__} actions are not supported; "
                          f"allowed: discrete or multi-discrete actions")

    def native_action(action):
        """Our one index over the product of the action's sizes -> the package's (multi-)discrete action."""
        if len(sizes) == 1:
            return action
        return jnp.stack(jnp.unravel_index(action, sizes)).astype(jnp.int32).reshape(action_spec.shape)

    def reset(key):
        inner, timestep = env.reset(key)
        obs, mask = _flatten_observation(timestep.observation)
        return inner, obs, _flat_mask(mask)

    def step(key, inner, action):
        inner, timestep = env.step(inner, native_action(action))
        obs, mask = _flatten_observation(timestep.observation)
        last = timestep.last()
        return inner, obs, timestep.reward, last & (timestep.discount == 0), last & (timestep.discount > 0), \
            _flat_mask(mask)

    example, mask = jax.eval_shape(lambda k: _flatten_observation(env.reset(k)[1].observation),
                                   jax.random.PRNGKey(0))
    if mask is not None and math.prod(mask.shape) != math.prod(sizes):
        mask = None  # a mask over something other than the action index (e.g. per agent): not ours to apply
    time_limit = getattr(env, "time_limit", None)
    return Native(reset, step, tuple(example.shape), math.prod(sizes),
                  int(time_limit) if time_limit is not None else None, has_mask=mask is not None)


def _flat_mask(mask: Any) -> Any:
    return None if mask is None else jnp.asarray(mask).reshape(-1)


def _jumanji_ids() -> list[str]:
    import jumanji

    return sorted(jumanji.registered_environments())


def _pgx(name: str) -> Native:
    import pgx

    env = pgx.make(name)
    if env.num_players != 1:
        raise ConfigError(f"env_id 'pgx/{name}' is a {env.num_players}-player game; rlzoo runs single-player pgx "
                          f"games only (e.g. pgx/2048)")

    def reset(key):
        state = env.init(key)
        return state, state.observation, state.legal_action_mask

    def step(key, state, action):
        state = env.step(state, action, key)
        return state, state.observation, state.rewards[0], state.terminated, state.truncated, state.legal_action_mask

    return Native(reset, step, tuple(env.observation_shape), int(env.num_actions), None, has_mask=True)


def _pgx_ids() -> list[str]:
    import pgx

    return sorted(pgx.available_envs())


def _playground(name: str) -> Native:
    """A MuJoCo Playground env of the DM Control suite, simulated by MJX in JAX (`impl="jax"`: Playground's
    default, Warp, stepped ~50x slower on this CPU). Playground's own `done` (e.g. the physics diverging)
    terminates; its episode length (1,000 steps) truncates, as its training wrapper does. Actions in [-1, 1]."""
    from mujoco_playground import registry

    config = registry.get_default_config(name)
    env = registry.load(name, config_overrides={"impl": "jax"})
    repeat = int(config.action_repeat)
    if not isinstance(env.observation_size, int):
        raise ConfigError(f"env_id 'playground/{name}' has structured observations {env.observation_size}; "
                          f"allowed: Playground envs with one observation vector")

    limit = int(config.episode_length) // repeat

    def reset(key):
        state = env.reset(key)
        return (state, jnp.zeros((), jnp.int32)), state.obs, None

    def step(key, inner, action):
        """Playground's env has no time limit of its own (its training wrapper adds one): it is counted here."""
        state, time = inner
        reward = jnp.zeros(())
        for _ in range(repeat):  # the training wrapper repeats each action `action_repeat` times
            state = env.step(state, action)
            reward = reward + state.reward
        terminated = state.done > 0
        truncated = jnp.logical_and(time + 1 >= limit, ~terminated)
        return (state, time + 1), state.obs, reward, terminated, truncated, None

    return Native(reset, step, (env.observation_size,), int(env.action_size), limit, discrete=False,
                  action_bounds=(-1.0, 1.0))


def _playground_ids() -> list[str]:
    from mujoco_playground import registry

    return sorted(registry.dm_control_suite.ALL_ENVS)


@dataclasses.dataclass(frozen=True)
class Backend:
    """How to build a package's native env from its id, and list the ids it knows. The package's pip extra and
    the id prefix share the backend's name, and so does its module unless `module` says otherwise."""

    native: Callable[[str], Native]
    known_ids: Callable[[], list[str]]
    module: str | None = None


BACKENDS: dict[str, Backend] = {
    "craftax": Backend(_craftax, lambda: list(CRAFTAX_IDS)),
    "navix": Backend(_navix, _navix_ids),
    "xminigrid": Backend(_xminigrid, _xminigrid_ids),
    "jumanji": Backend(_jumanji, _jumanji_ids),
    "pgx": Backend(_pgx, _pgx_ids),
    "playground": Backend(_playground, _playground_ids, module="mujoco_playground"),
}


def backend_of(env_id: str) -> str | None:
    """The backend an id names (`craftax/...` -> `craftax`), or None."""
    prefix = env_id.split("/", 1)[0]
    return prefix if "/" in env_id and prefix in BACKENDS else None


def import_or_explain(module: str, env_id: str, extra: str) -> Any:
    """Imports `module` for `env_id`, or raises a clear error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"env_id {env_id!r} needs the {module} package, which is not installed ({error}); "
                          f"install it with: pip install 'rlzoo[{extra}]'") from None


def require_package(env_id: str) -> None:
    """A clear error naming the extra to install when the package of `env_id` is not installed."""
    name = backend_of(env_id)
    import_or_explain(BACKENDS[name].module or name, env_id, name)
