"""What offline RL algorithm files share: the data they train on, the training loop, and small networks.

An offline algorithm file (`algorithms/bc.py`, `algorithms/iql.py`, ...) supplies
three pure functions and gets a `rlzoo.trainer.Trainer` back from `make_trainer`:

    init_learner(key, hparams, dataset) -> learner  # params, optimiser states, target params
    learn(learner, batch, key, hparams) -> (learner, stats)   # one gradient step on a Dataset minibatch
    policy(learner, key, obs, greedy) -> action    # obs already normalised like the dataset

One `Trainer.update` is `steps_per_update` gradient steps, each on a fresh
uniform minibatch drawn on device from the dataset, inside one `lax.scan`, then
`eval_episodes` online evaluation episodes of the greedy policy with
`rlzoo.evaluate.evaluate`. So the run-folder contract of `rlzoo.runner`
holds with this mapping: **`env_steps` counts gradient steps** (environment
steps are only spent on evaluation), `episode_return` / `episode_length` are the
mean evaluation return and length at the end of that update, and
`normalized_score` is D4RL's score of that return when the dataset has reference
returns. A million gradient steps are `num_chunks` jitted calls; the data never
leaves the device in between.

The dataset is the Trainer's `data`: an input of each compiled program (not a
constant embedded in it), shared by every member of a `vmap` over seeds and
hyperparameters (one copy on device), and never written into checkpoints, which
hold only the learner state.

`OfflineConfig` is the frozen dataclass of static settings (dataset, evaluation
env, update budget, minibatch, networks) and their checks that every offline
algorithm's `Config` subclasses.

Also here: `OfflineData` (the dataset, its metadata and the evaluation env,
`load_offline_data`).

Not here: any algorithm's loss (in its file), reading files (`rlzoo.datasets`),
the networks (`rlzoo.networks`: `GaussianActor`, `StateValue`, `EnsembleQ`, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo import datasets
from rlzoo.trainer import ConfigError, Trainer, check
from rlzoo.env_adapter import Env, make_env
from rlzoo.evaluate import evaluate
from rlzoo.networks import ACTIVATIONS

# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class OfflineData:
    """A dataset on device with what training and evaluation need to know about it."""

    dataset: datasets.Dataset
    metadata: dict[str, Any]
    env: Env | None  # the environment to evaluate on (None: no online evaluation)
    obs_stats: datasets.ObsStats | None  # set when observations were normalised on load

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.observations.shape[1:])

    @property
    def action_dim(self) -> int:
        return int(self.dataset.actions.shape[-1])

    @property
    def action_bounds(self) -> tuple[float, float]:
        """The env's action bounds, else the dataset's range."""
        if self.env is not None and self.env.spec.action_low is not None:
            return float(self.env.spec.action_low), float(self.env.spec.action_high)
        return float(self.dataset.actions.min()), float(self.dataset.actions.max())


def dataset_env_id(path: str) -> str:
    """The env id stored in an rlzoo dataset's metadata, '' if there is none or the file cannot be read."""
    try:
        return str(datasets.read_metadata(path).get("env_id", ""))
    except ConfigError:
        return ""


def load_offline_data(path: str, env_id: str = "", normalize_obs: bool = False) -> OfflineData:
    """Loads a dataset and makes its evaluation env (`env_id`, else the metadata's; 'none': no evaluation)."""
    try:
        dataset, metadata = datasets.load(path, normalize_obs=normalize_obs)
    except datasets.DatasetError as error:
        raise datasets.DatasetError(f"dataset={path!r} cannot be used: {error}") from None
    env_id = env_id or metadata.get("env_id", "")
    env = None
    if env_id and env_id != "none":
        env = make_env(env_id, backend=metadata.get("backend") or "positional")
        if env.spec.discrete or env.spec.obs_shape != tuple(dataset.observations.shape[1:]) or (
                env.spec.action_shape != tuple(dataset.actions.shape[1:])):
            raise ConfigError(f"env_id={env_id!r} is not allowed: its observations {env.spec.obs_shape} and actions "
                              f"{env.spec.action_shape} do not match the dataset's "
                              f"{tuple(dataset.observations.shape[1:])} and {tuple(dataset.actions.shape[1:])}")
    if dataset.actions.ndim != 2:
        raise ConfigError(f"dataset={path!r} is not allowed: these offline algorithms need continuous actions [N, A]; "
                          f"its actions have shape {dataset.actions.shape}")
    if env is not None:
        check_actions_within_bounds(path, np.asarray(dataset.actions), env)
    return OfflineData(dataset, metadata, env, datasets.obs_stats(metadata))


ACTION_BOUND_SLACK = 0.01
"""Dataset actions may stray beyond the env's bounds by this fraction of the bounds' width (float rounding,
clipping done in another precision); further out they were not taken in that env."""


def check_actions_within_bounds(path: str, actions: np.ndarray, env: Env) -> None:
    """Refuses a dataset whose actions lie outside the evaluation env's action bounds: the policy (squashed
    into those bounds) could never reproduce them, so the data belong to another env or another scaling."""
    low, high = env.spec.action_low, env.spec.action_high
    if low is None or high is None:
        return
    slack = ACTION_BOUND_SLACK * (np.asarray(high) - np.asarray(low))
    if np.any(actions < low - slack) or np.any(actions > high + slack):
        raise ConfigError(f"dataset={path!r} is not allowed with env_id={env.spec.env_id!r}: its actions span "
                          f"[{actions.min():.4g}, {actions.max():.4g}], outside the env's action bounds "
                          f"[{np.min(low):.4g}, {np.max(high):.4g}]; allowed: actions within the bounds (rescale "
                          f"them), or the env the data came from (--env-id)")


def check_batch_fits_dataset(config: "OfflineConfig", data: OfflineData) -> None:
    """A minibatch larger than the dataset would repeat transitions in every batch: a setting, not data."""
    size = int(data.dataset.rewards.shape[0])
    check(config.batch_size <= size, "batch_size", config.batch_size,
          f"must be <= the dataset's {size} transitions ({config.dataset})")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """Static settings shared by the offline algorithms: they fix shapes and the compiled program (the CLI)."""

    dataset: str = "datasets/Pendulum-v1/medium.hdf5"
    """Dataset: an rlzoo or D4RL HDF5 file, a Minari dataset folder, or a Minari id under MINARI_DATASETS_PATH."""
    env_id: str = ""
    """Environment to evaluate on; '' reads it from the dataset's metadata, 'none' turns evaluation off."""
    total_updates: int = 1_000_000
    """Gradient steps."""
    steps_per_update: int = 5_000
    """Gradient steps between evaluations (one row of metrics.csv each)."""
    batch_size: int = 256
    """Minibatch size."""
    episodes_per_eval: int = 10
    """Evaluation episodes after each update of steps_per_update gradient steps (0: none; metrics' episode_return)."""
    normalize_obs: bool = False
    """Standardise observations by the dataset's mean and std (the policy applies the same to raw observations)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the policy MLP and, where the algorithm has them, of the value and Q MLPs."""
    activation: str = "relu"
    """Hidden activation."""

    def __post_init__(self):
        if not self.env_id:
            object.__setattr__(self, "env_id", dataset_env_id(self.dataset))
        for name in ("total_updates", "steps_per_update", "batch_size"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.total_updates >= self.steps_per_update, "total_updates", self.total_updates,
              f"must be >= steps_per_update ({self.steps_per_update})")
        check(self.episodes_per_eval >= 0, "episodes_per_eval", self.episodes_per_eval, "must be >= 0")
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes, "sizes must be >= 1")
        check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")


# --------------------------------------------------------------------------- training loop


class OfflineState(NamedTuple):
    learner: Any  # the algorithm's own state (params, optimiser states, targets)
    key: jax.Array
    update_index: jax.Array  # Trainer updates done (each is steps_per_update gradient steps)


def make_trainer(config: OfflineConfig, data: OfflineData, init_learner: Callable, learn: Callable,
                 policy: Callable) -> Trainer:
    """A `Trainer` whose update is `steps_per_update` gradient steps and one evaluation (module docstring)."""
    check_batch_fits_dataset(config, data)
    total_updates, steps_per_update = config.total_updates, config.steps_per_update
    batch_size, eval_episodes = config.batch_size, config.episodes_per_eval
    num_updates = total_updates // steps_per_update
    env = data.env
    max_steps = (env.spec.max_episode_steps or 1000) if env is not None else 0
    with_score = env is not None and eval_episodes > 0 and datasets.has_reference_scores(data.metadata)

    def act(state: OfflineState, key: jax.Array, obs: jax.Array, greedy: bool) -> jax.Array:
        """The policy on raw observations (normalised with the dataset's statistics if training used them)."""
        if data.obs_stats is not None:
            obs = data.obs_stats.normalize(obs)
        return policy(state.learner, key, obs, greedy)

    def init(key: jax.Array, hp: Any, dataset: datasets.Dataset) -> OfflineState:
        key, learner_key = jax.random.split(key)
        return OfflineState(init_learner(learner_key, hp, dataset), key, jnp.zeros((), jnp.int32))

    def update(state: OfflineState, hp: Any, dataset: datasets.Dataset) -> tuple[OfflineState, dict[str, jax.Array]]:
        def gradient_step(learner, key: jax.Array):
            sample_key, learn_key = jax.random.split(key)
            return learn(learner, datasets.sample(dataset, sample_key, batch_size), learn_key, hp)

        key, steps_key, eval_key = jax.random.split(state.key, 3)
        learner, stats = jax.lax.scan(gradient_step, state.learner, jax.random.split(steps_key, steps_per_update))
        state = OfflineState(learner, key, state.update_index + 1)
        if env is not None and eval_episodes > 0:
            result = evaluate(lambda k, obs: act(state, k, obs, True), env, eval_key, eval_episodes, max_steps)
            episode_return = result.episode_return.mean()
            episode_length = result.episode_length.mean(dtype=jnp.float32)
        else:
            episode_return = episode_length = jnp.asarray(jnp.nan, jnp.float32)
        metrics = {"env_steps": state.update_index * steps_per_update,  # gradient steps, see the module docstring
                   "episode_return": episode_return, "episode_length": episode_length}
        if with_score:
            metrics["normalized_score"] = datasets.normalized_score(data.metadata, episode_return)
        return state, {**metrics, **jax.tree.map(jnp.mean, stats)}

    return Trainer(init, update, num_updates, steps_per_update, act if env is not None else None, env,
                   data=data.dataset)
