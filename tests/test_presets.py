"""Presets (`rlzoo.presets`): every preset is valid for its algorithm; the CLI picks the one for --env-id, says
so, lets flags override it and records each value's origin in config.json; `--preset NAME|none`; clear errors
for an unknown name or a preset of another env family. The presets' learning checks are in the algorithms'
test files (TD3 and SAC on Pendulum, DQN on Acrobot, PPO on CartPole)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from rlzoo import presets
from rlzoo.runner import apply_preset, flags_given, run_cli
from rlzoo.trainer import ConfigError


@pytest.mark.parametrize("preset", presets.PRESETS, ids=lambda p: p.label)
def test_every_preset_builds_a_valid_config_of_its_algorithm_and_cites_its_source(preset):
    module = importlib.import_module(f"rlzoo.algorithms.{preset.algo}")
    config_values, hparams_values = presets.split_values(preset, module.Config, module.HParams)
    for env_id in preset.envs_to_benchmark():
        config = module.Config(env_id=env_id, **config_values)
        assert preset.matches(env_id) and config.total_timesteps == preset.budget
    module.HParams(**hparams_values)
    assert preset.source and preset.env_ids and preset.budget


def test_labels_are_unique_and_each_env_has_at_most_one_preset_per_algorithm():
    labels = [p.label for p in presets.PRESETS]
    assert len(labels) == len(set(labels))
    for preset in presets.PRESETS:
        for env_id in preset.envs_to_benchmark():
            assert presets.preset_for_env(preset.algo, env_id) is preset


@pytest.mark.parametrize("algo", ["ppo", "pqn"])
def test_the_cartpole_presets_are_the_plain_default_configurations(algo):
    """PPO's defaults are PureJaxRL's CartPole configuration and PQN's purejaxql's, so the presets change no value
    there."""
    import importlib

    module = importlib.import_module(f"rlzoo.algorithms.{algo}")
    config, hparams, provenance = apply_preset(algo, module.Config(), module.HParams(), None, set())
    assert (config, hparams) == (module.Config(), module.HParams()) and provenance["preset"] == f"{algo}/cartpole"


def test_flags_override_the_preset_and_each_value_says_where_it_came_from():
    from rlzoo.algorithms import td3

    given = flags_given(["--actor-lr=5e-4", "--hidden-sizes", "64", "64", "--no-progress", "--seed", "3"])
    assert {"actor_lr", "hidden_sizes", "progress", "seed"} <= given
    config, hparams, provenance = apply_preset("td3", td3.Config(), td3.HParams(actor_lr=5e-4,), None, given)
    assert provenance["preset"] == "td3/pendulum"
    assert hparams.actor_lr == 5e-4 and hparams.critic_lr == 1e-3 and hparams.gamma == 0.98  # a sweep's base
    assert config.learning_starts == 10_000 and config.num_envs == 1
    origins = provenance["origins"]
    assert origins["actor_lr"] == "flag" and origins["critic_lr"] == "preset" and origins["activation"] == "default"
    assert set(origins) == {f.name for part in (config, hparams) for f in dataclasses.fields(part)}


def test_an_env_without_a_preset_and_preset_none_keep_the_plain_defaults():
    from rlzoo.algorithms import td3

    config, hparams, provenance = apply_preset("td3", td3.Config(env_id="brax/ant"), td3.HParams(), None, set())
    assert provenance["preset"] is None and config == td3.Config(env_id="brax/ant")
    _, _, provenance = apply_preset("td3", td3.Config(), td3.HParams(), "none", set())
    assert provenance["preset"] is None and set(provenance["origins"].values()) == {"default"}


def test_an_unknown_preset_or_one_for_another_env_family_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"preset='mujoco' is not a preset of td3; allowed: none, pendulum "
                                          r"\(Pendulum-v1\), brax \(brax/hopper"):
        presets.choose_preset("td3", "Pendulum-v1", "mujoco")
    with pytest.raises(ConfigError, match=r"preset='brax' is for brax/hopper, brax/halfcheetah, brax/walker2d, not "
                                          r"env_id='Pendulum-v1'; allowed for Pendulum-v1: none, pendulum"):
        presets.choose_preset("td3", "Pendulum-v1", "brax")


def test_help_shows_the_preset_mechanism_and_this_algorithms_presets(capsys):
    from rlzoo.algorithms import td3

    with pytest.raises(SystemExit):
        run_cli("td3", td3.Config, td3.HParams, td3.make_train, args=["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset" in text and "pendulum (Pendulum-v1, RL Baselines3 Zoo" in text
    assert "Flags given on the command line override it" in text


def test_the_cli_prints_the_preset_and_config_json_records_the_origins_which_resume_keeps(tmp_path, capsys):
    from rlzoo.algorithms import ppo

    run_dir = tmp_path / "run"
    args = ["--total-timesteps", "1024", "--num-chunks", "1", "--eval-episodes", "0", "--no-progress",
            "--run-dir", str(run_dir)]
    run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=args)
    assert "preset: ppo/cartpole for CartPole-v1 (PureJaxRL" in capsys.readouterr().out
    written = (run_dir / "config.json").read_text()
    saved = json.loads(written)
    assert saved["preset"] == "ppo/cartpole"
    assert saved["origins"]["total_timesteps"] == "flag" and saved["origins"]["num_envs"] == "preset"
    assert saved["origins"]["env_id"] == "default"
    with pytest.raises(SystemExit):  # the run is complete; resuming reads config.json and leaves it as it was
        run_cli("ppo", ppo.Config, ppo.HParams, ppo.make_train, args=["--resume", str(run_dir), "--no-progress"])
    assert (run_dir / "config.json").read_text() == written


def test_the_presets_doc_lists_every_preset_with_its_source():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "presets.md").read_text()
    for preset in presets.PRESETS:
        assert f"**`{preset.label}`**" in text and preset.source in text, preset.label
