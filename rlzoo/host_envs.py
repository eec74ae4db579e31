"""Host environments: Gymnasium envs, and Atari through ale-py, stepped outside the compiled program.

- `gymnasium/<id>` (gymnasium/CartPole-v1, gymnasium/Pendulum-v1, gymnasium/ALE/Breakout-v5, ...): any
  registered Gymnasium env with a `Box` observation and a `Discrete` or uniformly bounded `Box` action space.
- `atari/<Game>` (atari/Breakout, atari/Pong, ...): ALE v5 with the standard preprocessing of Machado et al.
  (2018) as the Atari papers use it: sticky actions 0.25, the minimal action set, frame skip 4 with max-pooling,
  up to 30 no-ops at reset, 84x84 grey frames, a stack of 4 (observation [84, 84, 4] uint8), and the
  108,000-frame (27,000-step) cap, which truncates. Needs `pip install 'rlzoo[atari]'` (ale-py, OpenCV).

How: the program's env state is a handle (an int32 naming a Gymnasium env in this process's pool) and a
tick. `reset` and `step` are `jax.pure_callback`s with `vmap_method="broadcast_all"`, so under `VecEnv`'s
vmap (and the vmap over seeds and hyperparameters) one callback steps every env of the batch in a Python
loop. Each step takes the tick of the step before and returns the next, so XLA keeps the steps in order;
the pool also checks the tick and refuses a step out of order. Gymnasium's own `terminated` and
`truncated` are kept apart, the final observation is returned, and an ended episode is reset on the host
in the same step (rlzoo's auto-reset). Each env is seeded from its JAX key at the first reset, so a run is
reproducible; the state of a host env cannot be saved in a checkpoint, so these runs cannot `--resume`.

What it costs: every step leaves the compiled program (a callback per step, then a Python loop over the
envs). `benchmarks/README.md` ("Host environments") gives steps/s beside the same env in JAX.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.env_backends import import_or_explain
from rlzoo.trainer import ConfigError

HOST_PREFIXES = ("gymnasium/", "atari/")
ATARI_STEP_CAP = 27_000  # 108,000 frames at frame skip 4 (Machado et al., 2018)


def is_host_id(env_id: str) -> bool:
    return env_id.startswith(HOST_PREFIXES)


# --------------------------------------------------------------------------- the pool of open envs


@dataclasses.dataclass
class _Open:
    env: Any  # a gymnasium.Env
    observe: Callable[[Any], np.ndarray]
    tick: int  # steps taken since the first reset; the next step must bring this tick


_POOL: dict[int, _Open] = {}
_POOL_LOCK = threading.Lock()
_HANDLES = itertools.count(1)


def _seed_of(key_data: np.ndarray) -> int:
    return int(key_data[0]) << 32 | int(key_data[1])


def _open_envs(make: Callable[[], Any], observe: Callable[[Any], np.ndarray], key_data: np.ndarray,
               obs_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Opens one env per key (leading axes of `key_data` [..., 2]), each reset with a seed from its key."""
    keys = key_data.reshape(-1, 2)
    handles, observations = [], []
    for key in keys:
        env = make()
        obs, _ = env.reset(seed=_seed_of(key))
        with _POOL_LOCK:
            handle = next(_HANDLES)
            _POOL[handle] = _Open(env, observe, 0)
        handles.append(handle)
        observations.append(observe(obs))
    batch = key_data.shape[:-1]
    return (np.asarray(handles, np.int32).reshape(batch),
            np.asarray(observations, obs_dtype).reshape(*batch, *observations[0].shape))


def _step_envs(to_action: Callable[[np.ndarray], Any], obs_shape: tuple[int, ...], obs_dtype: np.dtype,
               handles: np.ndarray, ticks: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Steps each env of `handles` once; an ended episode is reset here, its last observation kept apart.
    A parked env (negative handle, `HostEnv.park`) is not stepped: zeros come back and its tick stays."""
    batch = handles.shape
    flat_actions = actions.reshape(-1, *actions.shape[len(batch):])
    parked = np.zeros(obs_shape, obs_dtype)
    obs, final, rewards, terminated, truncated, next_ticks = [], [], [], [], [], []
    for handle, tick, action in zip(handles.reshape(-1), ticks.reshape(-1), flat_actions):
        if handle < 0:
            for column, value in ((obs, parked), (final, parked), (rewards, 0.0), (terminated, False),
                                  (truncated, False), (next_ticks, tick)):
                column.append(value)
            continue
        with _POOL_LOCK:
            opened = _POOL.get(int(handle))
        if opened is None:
            raise RuntimeError(f"host env {int(handle)} is not open in this process (host envs cannot be "
                               f"restored from a checkpoint)")
        if opened.tick != int(tick):
            raise RuntimeError(f"host env {int(handle)} was stepped out of order (tick {int(tick)}, expected "
                               f"{opened.tick})")
        opened.tick += 1
        next_obs, reward, term, trunc, _ = opened.env.step(to_action(action))
        last = opened.observe(next_obs)
        obs.append(opened.observe(opened.env.reset()[0]) if term or trunc else last)
        final.append(last)
        rewards.append(reward)
        terminated.append(term)
        truncated.append(trunc and not term)
        next_ticks.append(tick + 1)
    shape = (*batch, *obs_shape)
    return (np.asarray(obs, obs_dtype).reshape(shape), np.asarray(rewards, np.float32).reshape(batch),
            np.asarray(terminated, np.bool_).reshape(batch), np.asarray(truncated, np.bool_).reshape(batch),
            np.asarray(final, obs_dtype).reshape(shape), np.asarray(next_ticks, np.int32).reshape(batch))


def close_all() -> int:
    """Closes every open host env (e.g. between runs in one process); returns how many were open."""
    with _POOL_LOCK:
        opened = list(_POOL.values())
        _POOL.clear()
    for entry in opened:
        entry.env.close()
    return len(opened)


# --------------------------------------------------------------------------- the env as the program sees it


class HostState(NamedTuple):
    handle: chex.Array  # int32: the env in this process's pool
    tick: chex.Array  # int32: steps taken, chained from step to step to keep them in order


@dataclasses.dataclass(frozen=True, eq=False)
class HostEnv:
    """The `rlzoo.env_adapter.Env` interface over a Gymnasium env that steps on the host (see the module
    docstring). It does its own auto-reset: `obs` after a done step is the next episode's first."""

    make: Callable[[], Any]  # builds the gymnasium env, wrappers included
    observe: Callable[[Any], np.ndarray]  # gymnasium observation -> ours (e.g. frames to channels-last)
    spec: Any  # rlzoo.env_adapter.EnvSpec
    obs_dtype: np.dtype

    def _obs_struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.spec.obs_shape, self.obs_dtype)

    def _to_action(self, action: np.ndarray) -> Any:
        return int(action) if self.spec.discrete else np.asarray(action, np.float32)

    def reset(self, key: chex.PRNGKey) -> tuple[HostState, chex.Array]:
        key_data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        handle, obs = jax.pure_callback(
            lambda k: _open_envs(self.make, self.observe, np.asarray(k), self.obs_dtype),
            (jax.ShapeDtypeStruct((), jnp.int32), self._obs_struct()), key_data, vmap_method="broadcast_all")
        return HostState(handle, jnp.zeros((), jnp.int32)), obs

    def step(self, key: chex.PRNGKey, state: HostState, action: chex.Array):
        del key  # the host env has its own random state, seeded at reset
        flag = jax.ShapeDtypeStruct((), jnp.bool_)
        obs, reward, terminated, truncated, final_obs, tick = jax.pure_callback(
            lambda h, t, a: _step_envs(self._to_action, self.spec.obs_shape, self.obs_dtype, np.asarray(h),
                                       np.asarray(t), np.asarray(a)),
            (self._obs_struct(), jax.ShapeDtypeStruct((), jnp.float32), flag, flag, self._obs_struct(),
             jax.ShapeDtypeStruct((), jnp.int32)),
            state.handle, state.tick, action, vmap_method="broadcast_all")
        return HostState(state.handle, tick), obs, reward, terminated, truncated, final_obs


    def park(self, state: HostState, active: chex.Array) -> HostState:
        """Parks the env where `active` is false: later steps leave it alone and return zeros for it.

        For loops that stop at a batched condition (evaluation's while loop, vmapped over members): vmap
        runs the body for a member that has stopped too and throws its results away, which would step that
        member's envs behind the program's back."""
        return HostState(jnp.where(active, state.handle, -jnp.abs(state.handle)), state.tick)


# --------------------------------------------------------------------------- building one from an id


def _atari_games() -> list[str]:
    import ale_py

    return sorted(name[len("ALE/"):-len("-v5")] for name in _registry(ale_py) if name.startswith("ALE/")
                  and name.endswith("-v5"))


def _registry(ale_py: Any = None) -> list[str]:
    import gymnasium

    if ale_py is not None:
        gymnasium.register_envs(ale_py)
    return sorted(gymnasium.envs.registry)


def _atari_factory(env_id: str, game: str, max_episode_steps: int | None) -> Callable[[], Any]:
    import gymnasium

    ale_py = import_or_explain("ale_py", env_id, "atari")
    import_or_explain("cv2", env_id, "atari")
    games = _atari_games()
    if game not in games:
        from rlzoo.env_adapter import _did_you_mean

        raise ConfigError(f"env_id {env_id!r} is not an Atari game{_did_you_mean(game, games, 'atari/')}; "
                          f"allowed: atari/<game> for the games {', '.join(games)}")
    limit = max_episode_steps or ATARI_STEP_CAP

    def make() -> Any:
        gymnasium.register_envs(ale_py)
        env = gymnasium.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.25,
                             full_action_space=False, max_num_frames_per_episode=4 * ATARI_STEP_CAP)
        env = gymnasium.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                                    terminal_on_life_loss=False, grayscale_obs=True)
        env = gymnasium.wrappers.TimeLimit(env, limit)
        return gymnasium.wrappers.FrameStackObservation(env, 4)

    return make


def _gymnasium_factory(env_id: str, name: str, max_episode_steps: int | None) -> Callable[[], Any]:
    import gymnasium

    ale_py = import_or_explain("ale_py", env_id, "atari") if name.startswith("ALE/") else None
    known = _registry(ale_py)
    if name not in known:
        from rlzoo.env_adapter import _did_you_mean

        raise ConfigError(f"env_id {env_id!r} is not a registered Gymnasium env"
                          f"{_did_you_mean(name, known, 'gymnasium/')}; allowed: gymnasium/<id> for a registered "
                          f"id (e.g. gymnasium/CartPole-v1), atari/<game> for Atari")

    def make() -> Any:
        if ale_py is not None:
            gymnasium.register_envs(ale_py)
        return gymnasium.make(name, max_episode_steps=max_episode_steps)

    return make


def _open_for_spec(env_id: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as error:  # gymnasium raises DependencyNotInstalled, TypeError, ... for envs it cannot build
        raise ConfigError(f"env_id {env_id!r}: gymnasium could not build it: {error}") from None


def _spec_of(env_id: str, env: Any, observe: Callable[[Any], np.ndarray], time_limit: int | None):
    """Our `EnvSpec` from the env's spaces; refuses the spaces the algorithms do not take."""
    from gymnasium import spaces

    from rlzoo.env_adapter import EnvSpec

    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box):
        raise ConfigError(f"env_id {env_id!r} has a {type(obs_space).__name__} observation space; allowed: Box")
    obs = observe(obs_space.sample())
    obs_dtype = np.dtype(np.float32) if np.issubdtype(obs.dtype, np.floating) else obs.dtype
    if isinstance(action_space, spaces.Discrete):
        if int(action_space.start) != 0:
            raise ConfigError(f"env_id {env_id!r} has actions starting at {int(action_space.start)}; allowed: "
                              f"Discrete spaces starting at 0")
        spec = EnvSpec(env_id, obs.shape, True, int(action_space.n), max_episode_steps=time_limit, host=True)
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        low, high = np.unique(action_space.low), np.unique(action_space.high)
        if len(low) != 1 or len(high) != 1 or not np.isfinite([low[0], high[0]]).all():
            raise ConfigError(f"env_id {env_id!r} has action bounds {action_space.low}..{action_space.high}; "
                              f"allowed: the same finite bounds on every action dimension")
        spec = EnvSpec(env_id, obs.shape, False, int(action_space.shape[0]), float(low[0]), float(high[0]),
                       max_episode_steps=time_limit, host=True)
    else:
        raise ConfigError(f"env_id {env_id!r} has a {action_space} action space; allowed: Discrete, or a 1-D Box")
    return spec, obs_dtype


def _channels_last(frames: Any) -> np.ndarray:
    return np.moveaxis(np.asarray(frames), 0, -1)


def make_host_env(env_id: str, max_episode_steps: int | None = None) -> HostEnv:
    """A `gymnasium/<id>` or `atari/<Game>` env (see the module docstring)."""
    if env_id.startswith("atari/"):
        make, observe = _atari_factory(env_id, env_id[len("atari/"):], max_episode_steps), _channels_last
    else:
        make, observe = _gymnasium_factory(env_id, env_id[len("gymnasium/"):], max_episode_steps), np.asarray
    probe = _open_for_spec(env_id, make)
    time_limit = probe.spec.max_episode_steps if probe.spec is not None else None
    try:
        spec, obs_dtype = _spec_of(env_id, probe, observe, time_limit)
    finally:
        probe.close()
    return HostEnv(make, observe, spec, obs_dtype)
