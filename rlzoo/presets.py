"""Presets: named sets of Config and HParams values, with a budget, per algorithm and environment, each taken
from a published configuration and citing it.

`python algorithms/<algo>.py --env-id E` uses the preset of `<algo>` whose environments match E, prints
which, and records in config.json where each value came from (default, preset or flag); `--preset NAME`
picks one by name and `--preset none` keeps the plain defaults. Flags given on the command line override
the preset. A preset is data only: the algorithm files do not know about presets, and the values are
plain field names of their Config and HParams (`total_timesteps` is the budget).

`docs/presets.md` lists them with the returns they reach here (the benchmark command's preset jobs)
beside the published figures.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from rlzoo.trainer import ConfigError

NO_PRESET = "none"


@dataclasses.dataclass(frozen=True)
class Preset:
    """Config and HParams values of one algorithm for some environments, from a cited source."""

    algo: str  # the algorithm file's name, e.g. "td3"
    name: str  # e.g. "pendulum"; `--preset pendulum`
    env_ids: tuple[str, ...]  # ids or shell-style patterns ("*-MinAtar", "brax/*") it is meant for
    values: Mapping[str, Any]  # Config or HParams field -> value
    source: str  # where the values come from
    published: str = ""  # what the source reports for this algorithm, env and budget, where it does
    adapted: str = ""  # where and why our values differ from the source's
    benchmark_env_ids: tuple[str, ...] = ()  # the envs its benchmark rows run on (default: the exact env_ids)

    @property
    def label(self) -> str:
        return f"{self.algo}/{self.name}"

    def matches(self, env_id: str) -> bool:
        return any(fnmatch.fnmatchcase(env_id, pattern) for pattern in self.env_ids)

    @property
    def budget(self) -> int | None:
        return self.values.get("total_timesteps")

    def envs_to_benchmark(self) -> tuple[str, ...]:
        return self.benchmark_env_ids or tuple(e for e in self.env_ids if not any(c in e for c in "*?["))


def _preset(algo: str, name: str, env_ids: tuple[str, ...], source: str, **values: Any) -> Preset:
    published = values.pop("published", "")
    adapted = values.pop("adapted", "")
    benchmark_env_ids = values.pop("benchmark_env_ids", ())
    return Preset(algo, name, env_ids, MappingProxyType(values), source, published, adapted, benchmark_env_ids)


RL_ZOO = "RL Baselines3 Zoo, hyperparams/{}.yml ({})"
PUREJAXRL_CARTPOLE = "PureJaxRL, purejaxrl/ppo.py's CartPole-v1 config (Lu et al., 2022)"
PUREJAXQL = "purejaxql, purejaxql/config/alg/{}.yaml (Gallici et al., 2025)"
CLEANRL_MUJOCO = "CleanRL, cleanrl/{}_continuous_action.py defaults (its MuJoCo benchmark)"
CLEANRL_DQN = "CleanRL, cleanrl/dqn.py defaults (its classic-control benchmark)"
MINATAR = ("*-MinAtar",)
MINATAR_BENCHMARK = ("Breakout-MinAtar", "Asterix-MinAtar")
BRAX_LOCOMOTION = ("brax/hopper", "brax/halfcheetah", "brax/walker2d")

PRESETS: tuple[Preset, ...] = (
    # ----------------------------------------------------------------------------------------- PPO
    _preset("ppo", "cartpole", ("CartPole-v1",), PUREJAXRL_CARTPOLE,
            total_timesteps=500_000, num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4,
            hidden_sizes=(64, 64), activation="tanh", lr=2.5e-4, gamma=0.99, gae_lambda=0.95, clip_eps=0.2,
            ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5,
            published="PureJaxRL's CartPole-v1 curve reaches 500 (its README figure)"),
    _preset("ppo", "minatar", MINATAR, PUREJAXQL.format("ppo_minatar"),
            total_timesteps=10_000_000, num_envs=64, num_steps=128, num_epochs=4, num_minibatches=8,
            activation="relu", lr=5e-3, ent_coef=1e-4, clip_eps=0.2, max_grad_norm=0.5,
            benchmark_env_ids=MINATAR_BENCHMARK),
    # ----------------------------------------------------------------------------------------- PQN
    _preset("pqn", "cartpole", ("CartPole-v1",), PUREJAXQL.format("pqn_cartpole"),
            total_timesteps=500_000, num_envs=32, num_steps=64, num_epochs=4, num_minibatches=16,
            hidden_sizes=(256, 256), norm="layer", anneal_lr=True, optimizer="radam", lr=1e-4, gamma=0.99,
            lam=0.95, eps_start=1.0, eps_end=0.2, exploration_fraction=0.2, max_grad_norm=10.0, reward_scale=0.1,
            adapted="the same as pqn.py's defaults; purejaxql bootstraps from nothing at a time-limit truncation, "
                    "pqn.py from the true final observation"),
    _preset("pqn", "minatar", MINATAR, PUREJAXQL.format("pqn_minatar"),
            total_timesteps=10_000_000, num_envs=128, num_steps=32, num_epochs=2, num_minibatches=32,
            lr=5e-4, lam=0.65, eps_end=0.05, exploration_fraction=0.1, reward_scale=1.0,
            benchmark_env_ids=MINATAR_BENCHMARK),
    # ----------------------------------------------------------------------------------------- DQN
    _preset("dqn", "acrobot", ("Acrobot-v1",), CLEANRL_DQN,
            total_timesteps=500_000, num_envs=10, train_every=1, batch_size=128, buffer_size=10_000,
            learning_starts=10_000, hidden_sizes=(120, 84), loss="mse", lr=2.5e-4, gamma=0.99, tau=1.0,
            target_period=50.0, eps_start=1.0, eps_end=0.05, exploration_fraction=0.5, max_grad_norm=10.0,
            published="-96.80 +- 21.87 (CleanRL's Acrobot-v1-dqn-seed1 model card, 1 seed)",
            adapted="CleanRL steps 1 env and trains every 10 steps; here 10 envs and one gradient step per "
                    "vectorised step (the same 1 per 10 env steps), its target copy every 500 env steps every "
                    "50 updates. RL Zoo's tuned Acrobot-v1 values (1.5e5 steps, a hard target update every "
                    "5,000 steps) were tried first and reached only -128.6 and -362.5 here on 2 seeds"),
    # ----------------------------------------------------------------------------------------- SAC
    _preset("sac", "pendulum", ("Pendulum-v1",), RL_ZOO.format("sac", "Pendulum-v1"),
            total_timesteps=20_000, num_envs=1, utd_ratio=1, buffer_size=20_000, batch_size=256,
            learning_starts=256, hidden_sizes=(256, 256), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
            gamma=0.99, tau=0.005,
            adapted="RL Zoo sets only the budget and lr 1e-3; the rest are SB3's SAC defaults, except that "
                    "learning starts at 256 steps (one batch without repeats), not 100; its 1e6 buffer is "
                    "20,000 here, the whole run, so nothing is ever overwritten either way"),
    _preset("sac", "brax", BRAX_LOCOMOTION, CLEANRL_MUJOCO.format("sac"),
            total_timesteps=1_000_000, num_envs=1, utd_ratio=1, buffer_size=1_000_000, batch_size=256,
            learning_starts=5_000, hidden_sizes=(256, 256), actor_lr=3e-4, critic_lr=1e-3, alpha_lr=1e-3,
            gamma=0.99, tau=0.005,
            adapted="CleanRL's MuJoCo (v4) settings on the brax versions of the same robots"),
    # ----------------------------------------------------------------------------------------- TD3
    _preset("td3", "pendulum", ("Pendulum-v1",), RL_ZOO.format("td3", "Pendulum-v1"),
            total_timesteps=20_000, num_envs=1, utd_ratio=1, buffer_size=20_000, batch_size=256,
            learning_starts=10_000, hidden_sizes=(400, 300), actor_lr=1e-3, critic_lr=1e-3, gamma=0.98,
            tau=0.005, exploration_noise=0.1, policy_noise=0.2, noise_clip=0.5, policy_delay=2.0,
            published="-196 +- 119 at 2e4 steps (RL Zoo's TD3 Pendulum-v1 model card)",
            adapted="its 200,000 buffer is 20,000 here, the whole run; the rest are RL Zoo's values and "
                    "SB3's TD3 defaults (batch 256, tau 0.005, target noise 0.2 clipped at 0.5, delay 2)"),
    _preset("td3", "brax", BRAX_LOCOMOTION, CLEANRL_MUJOCO.format("td3"),
            total_timesteps=1_000_000, num_envs=1, utd_ratio=1, buffer_size=1_000_000, batch_size=256,
            learning_starts=25_000, hidden_sizes=(256, 256), actor_lr=3e-4, critic_lr=3e-4, gamma=0.99,
            tau=0.005, exploration_noise=0.1, policy_noise=0.2, noise_clip=0.5, policy_delay=2.0,
            adapted="CleanRL's MuJoCo (v4) settings on the brax versions of the same robots"),
)


def presets_of(algo: str) -> tuple[Preset, ...]:
    return tuple(p for p in PRESETS if p.algo == algo)


def preset_for_env(algo: str, env_id: str) -> Preset | None:
    """The first preset of `algo` meant for `env_id`, or None."""
    return next((p for p in presets_of(algo) if p.matches(env_id)), None)


def _listing(presets: tuple[Preset, ...]) -> str:
    return ", ".join(f"{p.name} ({', '.join(p.env_ids)})" for p in presets) or "none for this algorithm"


def choose_preset(algo: str, env_id: str, name: str | None) -> Preset | None:
    """The preset a run uses: `name` (`--preset`), else the one meant for `env_id`; None for `none` or where
    no preset fits. An unknown name, or a preset meant for other envs, is a ConfigError listing the valid ones."""
    if name is None:
        return preset_for_env(algo, env_id)
    if name == NO_PRESET:
        return None
    named = {p.name: p for p in presets_of(algo)}
    if name not in named:
        raise ConfigError(f"preset={name!r} is not a preset of {algo}; allowed: {NO_PRESET}, "
                          f"{_listing(presets_of(algo))}")
    preset = named[name]
    if not preset.matches(env_id):
        fitting = tuple(p for p in presets_of(algo) if p.matches(env_id))
        raise ConfigError(f"preset={name!r} is for {', '.join(preset.env_ids)}, not env_id={env_id!r}; allowed "
                          f"for {env_id}: {NO_PRESET}" + (f", {_listing(fitting)}" if fitting else ""))
    return preset


def split_values(preset: Preset, config_cls: type, hparams_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The preset's values as (Config fields, HParams fields); a value for neither is a programming error."""
    config_fields = {f.name for f in dataclasses.fields(config_cls)}
    hparams_fields = {f.name for f in dataclasses.fields(hparams_cls)}
    unknown = set(preset.values) - config_fields - hparams_fields
    if unknown:
        raise ValueError(f"preset {preset.label} sets {sorted(unknown)}, fields of neither Config nor HParams")
    return ({k: v for k, v in preset.values.items() if k in config_fields},
            {k: v for k, v in preset.values.items() if k in hparams_fields})
