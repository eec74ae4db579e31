"""One functional interface over gymnax, brax and rlzoo's own environments.

`make_env(env_id)` returns a single-environment `Env` with gymnax-1.x semantics
(auto-reset, `terminated` and `truncated` kept apart, the final observation of an
ended episode returned beside the reset one). `VecEnv` batches it over
`num_envs`, tracks episode return and length, and optionally normalises
observations and rewards and clips continuous actions. Everything is a pure
function of explicit state, so it runs inside `jax.jit`, `lax.scan` and `vmap`.

Not here: policies, rollouts or anything that learns; and no rendering.

Ids: gymnax ids (`CartPole-v1`, `Breakout-MinAtar`, ...), `brax/<name>` (e.g.
`brax/hopper`; backend `positional` unless `backend=` says otherwise), the
`<package>/<native id>` ids of `rlzoo.env_backends` (craftax, navix, xminigrid,
jumanji, pgx, playground; each an optional extra, wrapped by `EpisodicEnv`), the host
environments of `rlzoo.host_envs` (`gymnasium/<id>`, `atari/<Game>`), and the ids
of a `registry` of gymnax-API factories that the caller passes in. The layer above
(`rlzoo.envs.make_env`, what algorithm files call) passes rlzoo's own environments
and adds the `meta/<id>` wrapper; this module imports neither.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import chex
import jax
import jax.numpy as jnp

from rlzoo.trainer import ConfigError

BRAX_PREFIX = "brax/"
BRAX_BACKENDS = ("positional", "generalized", "spring", "mjx")
BRAX_TIME_LIMIT = 1000


# --------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static facts about an environment that networks and algorithms need."""

    env_id: str
    obs_shape: tuple[int, ...]
    discrete: bool
    num_actions: int  # discrete: number of actions; continuous: action dimension
    action_low: float | None = None  # continuous only (scalar bounds, broadcast)
    action_high: float | None = None
    max_episode_steps: int | None = None
    action_mask: bool = False  # the env gives a legal-action mask (`Env.action_mask`) that policies must honour
    host: bool = False  # steps on the host through callbacks (`rlzoo.host_envs`): its state cannot be checkpointed

    @property
    def action_shape(self) -> tuple[int, ...]:
        return () if self.discrete else (self.num_actions,)


class Env(Protocol):
    """A single environment with auto-reset; `VecEnv` batches it."""

    spec: EnvSpec

    def reset(self, key: chex.PRNGKey) -> tuple[Any, chex.Array]: ...

    def step(
        self, key: chex.PRNGKey, state: Any, action: chex.Array
    ) -> tuple[Any, chex.Array, chex.Array, chex.Array, chex.Array, chex.Array]:
        """Returns (state, obs, reward, terminated, truncated, final_obs).

        `obs` is the observation to act on next: on a done step it is already the
        next episode's first observation, and `final_obs` is the last observation of
        the episode that ended (otherwise `final_obs == obs`).
        """
        ...

    # Envs whose spec has `action_mask` also give `action_mask(state) -> [num_actions] bool`: the legal actions
    # of the observation to act on next.


def _strong(tree: Any) -> Any:
    """Drops weak types so that reset and step states have identical avals."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, jnp.asarray(x).dtype), tree)


def _select(pred: chex.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


# --------------------------------------------------------------------------- backends


@dataclasses.dataclass(frozen=True)
class GymnaxEnv:
    """gymnax 1.x environment (six-value `step`, auto-reset, `final_observation`)."""

    env: Any
    params: Any
    spec: EnvSpec

    def reset(self, key):
        obs, state = self.env.reset(key, self.params)
        return state, obs

    def step(self, key, state, action):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, self.params)
        return (
            state,
            obs,
            jnp.asarray(reward, jnp.float32),
            jnp.asarray(terminated, jnp.bool_),
            jnp.asarray(truncated, jnp.bool_),
            info["final_observation"],
        )


def _gymnax_spec(env_id: str, env: Any, params: Any) -> EnvSpec:
    from gymnax.environments import spaces

    action_space = env.action_space(params)
    obs_shape = tuple(env.observation_space(params).shape)
    max_steps = getattr(params, "max_steps_in_episode", None)
    max_steps = int(max_steps) if max_steps is not None else None
    if isinstance(action_space, spaces.Discrete):
        return EnvSpec(env_id, obs_shape, True, int(action_space.n), max_episode_steps=max_steps)
    if isinstance(action_space, spaces.Box):
        shape = tuple(action_space.shape) or (1,)
        low = float(jnp.min(jnp.asarray(action_space.low)))
        high = float(jnp.max(jnp.asarray(action_space.high)))
        return EnvSpec(env_id, obs_shape, False, int(shape[0]), low, high, max_steps)
    raise ConfigError(f"env_id {env_id!r}: action space {type(action_space).__name__} is not supported")


class BraxState(NamedTuple):
    inner: Any  # brax.envs.State
    time: chex.Array  # steps taken in the current episode


@dataclasses.dataclass(frozen=True)
class BraxEnv:
    """brax environment with truncation at `max_episode_steps` and true auto-reset."""

    env: Any
    spec: EnvSpec

    def reset(self, key):
        inner = _strong(self.env.reset(key))
        return BraxState(inner, jnp.zeros((), jnp.int32)), inner.obs

    def step(self, key, state, action):
        nxt = _strong(self.env.step(state.inner, action))
        time = state.time + 1
        terminated = nxt.done > 0.5
        truncated = jnp.logical_and(time >= self.spec.max_episode_steps, ~terminated)
        done = jnp.logical_or(terminated, truncated)
        fresh, fresh_obs = self.reset(key)
        state = _select(done, fresh, BraxState(nxt, time))
        obs = jnp.where(done, fresh_obs, nxt.obs)
        return state, obs, nxt.reward.astype(jnp.float32), terminated, truncated, nxt.obs


def _make_brax(env_id: str, backend: str, max_episode_steps: int) -> BraxEnv:
    from brax import envs as brax_envs

    name = env_id[len(BRAX_PREFIX):]
    known = sorted(brax_envs._envs)  # noqa: SLF001 - brax keeps its registry private
    if name not in known:
        raise ConfigError(f"env_id {env_id!r} is unknown{_did_you_mean(name, known, BRAX_PREFIX)}; "
                         f"brax ids are: {', '.join(BRAX_PREFIX + k for k in known)}")
    if backend not in BRAX_BACKENDS:
        raise ConfigError(f"backend {backend!r} is not a brax backend; allowed: {', '.join(BRAX_BACKENDS)}")
    env = brax_envs.get_environment(name, backend=backend)
    spec = EnvSpec(env_id, (env.observation_size,), False, env.action_size, -1.0, 1.0, max_episode_steps)
    return BraxEnv(env, spec)


class EpisodeState(NamedTuple):
    inner: Any  # the package's state
    time: chex.Array  # steps taken in the current episode
    mask: chex.Array  # legal actions of the current observation ([num_actions] bool; all true without masks)
    final_mask: chex.Array  # legal actions of the last `final_obs` (differs from `mask` where an episode ended)


@dataclasses.dataclass(frozen=True)
class EpisodicEnv:
    """A `Native` env with rlzoo's auto-reset, final observation and time limit (`spec.max_episode_steps`)."""

    native: Any  # rlzoo.env_backends.Native
    spec: EnvSpec
    limit: int | None  # rlzoo's own limit on top of the package's (None: the package's only)

    def _mask(self, mask: Any) -> chex.Array:
        return jnp.ones((self.spec.num_actions,), jnp.bool_) if mask is None else jnp.asarray(mask, jnp.bool_)

    def reset(self, key: chex.PRNGKey) -> tuple[EpisodeState, chex.Array]:
        inner, obs, mask = self.native.reset(key)
        mask = self._mask(mask)
        return EpisodeState(inner, jnp.zeros((), jnp.int32), mask, mask), obs

    def action_mask(self, state: EpisodeState, final: bool = False) -> chex.Array:
        """Legal actions of the observation to act on, or (`final`) of the last step's `final_obs`."""
        return state.final_mask if final else state.mask

    def step(self, key: chex.PRNGKey, state: EpisodeState, action: chex.Array):
        step_key, reset_key = jax.random.split(key)
        inner, obs, reward, terminated, truncated, mask = self.native.step(step_key, state.inner, action)
        time = state.time + 1
        terminated = jnp.asarray(terminated, jnp.bool_)
        truncated = jnp.asarray(truncated, jnp.bool_)
        if self.limit is not None:
            truncated = jnp.logical_or(truncated, time >= self.limit)
        truncated = jnp.logical_and(truncated, ~terminated)
        done = jnp.logical_or(terminated, truncated)
        fresh, fresh_obs = self.reset(reset_key)
        mask = self._mask(mask)
        ongoing = EpisodeState(inner, time, mask, mask)
        new = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, ongoing)._replace(final_mask=mask)
        return (new, jnp.where(done, fresh_obs, obs), jnp.asarray(reward, jnp.float32).reshape(()),
                terminated, truncated, obs)


def _make_backend(env_id: str, max_episode_steps: int | None) -> EpisodicEnv:
    """A `<backend>/<native id>` env (`rlzoo.env_backends`). Time limit: the package's own, and
    `max_episode_steps` on top where given; `env_backends.DEFAULT_TIME_LIMIT` where the package has none."""
    from rlzoo import env_backends

    env_backends.require_package(env_id)
    name = env_backends.backend_of(env_id)
    native_id = env_id[len(name) + 1:]
    known = env_backends.BACKENDS[name].known_ids()
    if native_id not in known:
        raise ConfigError(f"env_id {env_id!r} is unknown to {name}{_did_you_mean(native_id, known, name + '/')}; "
                          f"{name} ids are: {', '.join(f'{name}/{k}' for k in known)}")
    native = env_backends.BACKENDS[name].native(native_id)
    limit = max_episode_steps if max_episode_steps is not None else (
        None if native.time_limit is not None else env_backends.DEFAULT_TIME_LIMIT)
    horizon = min(x for x in (limit, native.time_limit) if x is not None)
    low, high = native.action_bounds or (None, None)
    spec = EnvSpec(env_id, native.obs_shape, native.discrete, native.num_actions, low, high,
                   max_episode_steps=horizon, action_mask=native.has_mask)
    return EpisodicEnv(native, spec, limit)


# --------------------------------------------------------------------------- registry


def _did_you_mean(name: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(prefix + c) for c in close)}?)" if close else ""


def _backend_names() -> list[str]:
    from rlzoo.env_backends import BACKENDS

    return sorted(BACKENDS)


def known_env_ids(registry: Mapping[str, Callable[[], Any]] = MappingProxyType({})) -> list[str]:
    """Every id `make_env` accepts with this registry, except `brax/<name>` which is listed by brax."""
    import gymnax

    return sorted(registry) + [e for e in gymnax.registered_envs if e != "MNISTBandit-bsuite"]


def make_env(env_id: str, *, backend: str = "positional", max_episode_steps: int | None = None,
             registry: Mapping[str, Callable[[], Any]] = MappingProxyType({})) -> Env:
    """Builds a single environment from its id (see the module docstring).

    `registry` maps extra ids to zero-argument factories of gymnax-API environments;
    they are looked up before gymnax's. `backend` applies to brax ids only;
    `max_episode_steps` to brax ids (default `BRAX_TIME_LIMIT`), package ids
    (`rlzoo.env_backends`: a limit on top of the package's own) and host ids
    (`rlzoo.host_envs`: Gymnasium's `max_episode_steps`). Gymnax and registry
    envs carry their own time limit in their params.
    """
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ConfigError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    if env_id.startswith(BRAX_PREFIX):
        return _make_brax(env_id, backend, max_episode_steps or BRAX_TIME_LIMIT)
    from rlzoo.env_backends import backend_of
    from rlzoo.host_envs import is_host_id, make_host_env

    if backend_of(env_id) is not None:
        return _make_backend(env_id, max_episode_steps)
    if is_host_id(env_id):
        return make_host_env(env_id, max_episode_steps)

    import gymnax

    if env_id in registry:
        env = registry[env_id]()
        params = env.default_params
        return GymnaxEnv(env, params, _gymnax_spec(env_id, env, params))
    if env_id in gymnax.registered_envs:
        env, params = gymnax.make(env_id)
        return GymnaxEnv(env, params, _gymnax_spec(env_id, env, params))
    known = known_env_ids(registry)
    ours = f", or rlzoo ids ({', '.join(sorted(registry))})" if registry else ""
    raise ConfigError(
        f"env_id {env_id!r} is unknown{_did_you_mean(env_id, known)}. Allowed: gymnax ids "
        f"(e.g. CartPole-v1, Pendulum-v1, Breakout-MinAtar), 'brax/<name>' (e.g. brax/hopper), "
        f"'<package>/<id>' for the packages {', '.join(_backend_names())} (e.g. craftax/Craftax-Classic-Symbolic-v1, "
        f"pgx/2048), host envs 'gymnasium/<id>' and 'atari/<game>' (e.g. gymnasium/CartPole-v1, atari/Breakout){ours}."
    )


# --------------------------------------------------------------------------- vectorised


class RunningMeanStd(NamedTuple):
    """Running moments (Chan et al. parallel update) for normalisation."""

    mean: chex.Array
    var: chex.Array
    count: chex.Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningMeanStd:
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))

    def update(self, batch: chex.Array) -> RunningMeanStd:
        batch_mean, batch_var, n = batch.mean(0), batch.var(0), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        return RunningMeanStd(mean, m2 / total, total)

    def normalize(self, x: chex.Array, clip: float = 10.0) -> chex.Array:
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)


class VecEnvState(NamedTuple):
    env_state: Any  # batched backend state
    episode_return: chex.Array  # [N] running return of the current episode (raw reward)
    episode_length: chex.Array  # [N]
    last_episode_return: chex.Array  # [N] return of each env's last finished episode
    last_episode_length: chex.Array  # [N]
    episodes_finished: chex.Array  # [N]
    obs_stats: RunningMeanStd | None
    discounted_return: chex.Array  # [N] for reward normalisation
    return_stats: RunningMeanStd | None


class TimeStep(NamedTuple):
    """One batched transition, as algorithms consume it."""

    obs: chex.Array  # next observation to act on (reset one where the episode ended)
    reward: chex.Array  # possibly normalised
    terminated: chex.Array  # bool: true terminal, do not bootstrap
    truncated: chex.Array  # bool: time limit, bootstrap from final_obs
    final_obs: chex.Array  # true next observation s'
    episode_return: chex.Array  # raw return of the episode ended here (valid where done)
    episode_length: chex.Array


@dataclasses.dataclass(frozen=True)
class VecEnv:
    """`num_envs` copies of `env`, stepped in lockstep with `vmap`.

    Observation normalisation uses running moments over all envs; reward
    normalisation divides by the running std of the discounted return (as in
    PureJaxRL / SB3's VecNormalize), with `reward_gamma`.
    """

    env: Env
    num_envs: int
    normalize_obs: bool = False
    normalize_reward: bool = False
    reward_gamma: float = 0.99
    clip_actions: bool = True

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    def action_mask(self, state: VecEnvState, final: bool = False) -> chex.Array | None:
        """[num_envs, num_actions] legal actions of the observations to act on (or, `final`, of the last step's
        `final_obs`), or None if the env has no mask (a static fact: algorithms branch on it in Python, so
        envs without masks compile as before)."""
        if not self.spec.action_mask:
            return None
        return jax.vmap(lambda s: self.env.action_mask(s, final))(state.env_state)

    def reset(self, key: chex.PRNGKey) -> tuple[VecEnvState, chex.Array]:
        env_state, obs = jax.vmap(self.env.reset)(jax.random.split(key, self.num_envs))
        zeros = jnp.zeros((self.num_envs,), jnp.float32)
        counts = jnp.zeros((self.num_envs,), jnp.int32)
        obs_stats = RunningMeanStd.create(self.spec.obs_shape) if self.normalize_obs else None
        return_stats = RunningMeanStd.create(()) if self.normalize_reward else None
        state = VecEnvState(env_state, zeros, counts, zeros, counts, counts, obs_stats, zeros, return_stats)
        if obs_stats is not None:
            state = state._replace(obs_stats=obs_stats.update(obs.astype(jnp.float32)))
            obs = state.obs_stats.normalize(obs)
        return state, obs

    def step(self, key: chex.PRNGKey, state: VecEnvState, action: chex.Array) -> tuple[VecEnvState, TimeStep]:
        chex.assert_shape(action, (self.num_envs, *self.spec.action_shape))
        if self.clip_actions and not self.spec.discrete:
            action = jnp.clip(action, self.spec.action_low, self.spec.action_high)
        keys = jax.random.split(key, self.num_envs)
        env_state, obs, reward, terminated, truncated, final_obs = jax.vmap(self.env.step)(
            keys, state.env_state, action
        )
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        new = VecEnvState(
            env_state=env_state,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
            last_episode_return=jnp.where(done, episode_return, state.last_episode_return),
            last_episode_length=jnp.where(done, episode_length, state.last_episode_length),
            episodes_finished=state.episodes_finished + done,
            obs_stats=state.obs_stats,
            discounted_return=state.discounted_return,
            return_stats=state.return_stats,
        )
        if state.obs_stats is not None:
            obs_stats = state.obs_stats.update(obs.astype(jnp.float32))
            obs, final_obs = obs_stats.normalize(obs), obs_stats.normalize(final_obs)
            new = new._replace(obs_stats=obs_stats)
        if state.return_stats is not None:
            discounted = state.discounted_return * self.reward_gamma + reward
            return_stats = state.return_stats.update(discounted)
            reward = reward / jnp.sqrt(return_stats.var + 1e-8)
            new = new._replace(discounted_return=jnp.where(done, 0.0, discounted), return_stats=return_stats)
        return new, TimeStep(obs, reward, terminated, truncated, final_obs, episode_return, episode_length)


def mean_last_episode_return(state: VecEnvState) -> chex.Array:
    """Mean over envs of their last finished episode's return (NaN if none finished)."""
    finished = state.episodes_finished > 0
    total = jnp.sum(jnp.where(finished, state.last_episode_return, 0.0))
    return jnp.where(finished.any(), total / jnp.maximum(finished.sum(), 1), jnp.nan)


def mean_last_episode_length(state: VecEnvState) -> chex.Array:
    finished = state.episodes_finished > 0
    total = jnp.sum(jnp.where(finished, state.last_episode_length, 0))
    return jnp.where(finished.any(), total / jnp.maximum(finished.sum(), 1), jnp.nan)


def episode_metrics(state: VecEnvState) -> dict[str, chex.Array]:
    """The two metrics every online trainer reports: mean last episode return and length over envs."""
    return {"episode_return": mean_last_episode_return(state), "episode_length": mean_last_episode_length(state)}
