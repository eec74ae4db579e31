"""Facts about offline datasets: generated tiers follow D4RL, files reload bit-identically, bad files are refused."""

import dataclasses
import hashlib
import json
import os
import shutil
import stat

import h5py
import jax
import numpy as np
import pytest

from rlzoo import datasets
from rlzoo.datasets import DatasetError


def file_digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def host_arrays(dataset):
    return {key: np.asarray(getattr(dataset, key)) for key in datasets.KEYS}


def write_hdf5(path, arrays, attrs=None):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def d4rl_arrays(n=12, obs_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminals": np.zeros(n, bool), "timeouts": np.arange(n) % 4 == 3}


# --------------------------------------------------------------------------- generated tiers


def test_a_pendulum_medium_dataset_records_its_size_provenance_and_reference_returns(pendulum_offline):
    """Timing is not asserted here (a loaded machine would fail it): each dataset records its own
    `transitions_per_s`, and the generator prints it."""
    medium = pendulum_offline.written["medium"]
    assert medium["num_transitions"] == 20_000
    for field in ("env_id", "backend", "policy_return", "seed", "rlzoo_version", "checksum", "ref_min_score",
                  "ref_max_score"):
        assert field in medium, field
    assert medium["env_id"] == "Pendulum-v1" and medium["checksum"].startswith("sha256:")


def test_tiers_are_random_medium_expert_replay_and_medium_expert_as_in_d4rl(pendulum_offline):
    tiers = pendulum_offline.written
    score = {tier: datasets.normalized_score(m, m["policy_return"]) for tier, m in tiers.items()}
    assert score["random"] == pytest.approx(0.0, abs=1e-6) and score["expert"] == pytest.approx(100.0, abs=1e-6)
    assert 20.0 <= score["medium"] <= 65.0, score  # a third to a half of expert, up to evaluation noise
    assert score["medium-replay"] < score["medium"], score  # the replay holds the worse policies before medium
    assert tiers["medium-replay"]["behaviour_env_steps"] == tiers["medium"]["behaviour_env_steps"]
    assert tiers["medium"]["behaviour_env_steps"] < tiers["expert"]["behaviour_env_steps"]
    medium, expert, both = (host_arrays(datasets.load(tiers[t]["path"])[0]) for t in ("medium", "expert",
                                                                                       "medium-expert"))
    for key in datasets.KEYS:
        np.testing.assert_array_equal(both[key], np.concatenate([medium[key], expert[key]]))
    # Each env's stream is whole: within it, the next observation is the following observation.
    continuing = ~(medium["terminals"] | medium["timeouts"])
    np.testing.assert_array_equal(medium["next_observations"][:-1][continuing[:-1]],
                                  medium["observations"][1:][continuing[:-1]])
    assert medium["timeouts"].sum() == 100  # Pendulum's 200-step limit: one episode per env in 200 steps
    assert (np.abs(medium["actions"]) <= 2.0).all()


def test_medium_is_a_trained_snapshot_never_the_untrained_policy():
    """brax/hopper with SAC: the untrained policy (actions near 0) stood for ~400 steps, normalised 57, closer to
    40 than any trained snapshot; medium must still come from training (here the one at 16.7)."""
    from rlzoo.experiments.offline_datasets import choose_medium

    refs = {"ref_min_score": 100.0, "ref_max_score": 700.0}
    assert choose_medium(np.array([425.0, 150.0, 200.0, 700.0]), refs, 40.0) == 2
    assert choose_medium(np.array([100.0, 350.0, 200.0, 700.0]), refs, 40.0) == 1


def test_an_expert_no_better_than_random_actions_is_a_clear_error():
    """brax/walker2d with SAC after 1e5 steps: expert 232.3 against random 254.4 would invert every score."""
    from rlzoo.trainer import ConfigError
    from rlzoo.experiments.offline_datasets import GenerateConfig, reference_returns

    config = GenerateConfig(env_id="brax/walker2d", learner="sac", behaviour_timesteps=100_000)
    with pytest.raises(ConfigError, match=r"behaviour_timesteps=100000 is not allowed for brax/walker2d: the expert "
                                          r"\(the sac learner's final policy\) returned 232.3, not more than uniform "
                                          r"random actions' 254.4"):
        reference_returns(config, 254.4, 232.3)
    assert reference_returns(config, 108.6, 641.6) == {"ref_min_score": 108.6, "ref_max_score": 641.6}


@pytest.mark.slow
def test_sac_is_a_behaviour_learner_too(tmp_path):
    """`--learner sac` (the brax tiers' learner): SAC's sampling policy after 14k Pendulum steps is the expert,
    well above the random tier (measured: -1180 random; SAC's own snapshots reach about -250 by 12k steps)."""
    from rlzoo.trainer import ConfigError
    from rlzoo.experiments.offline_datasets import GenerateConfig, generate, train_behaviour

    config = GenerateConfig(env_id="Pendulum-v1", out=str(tmp_path), learner="sac", behaviour_timesteps=14_000,
                            num_snapshots=3, tier_size=4_000, num_envs=10, eval_episodes=4,
                            tiers=("random", "medium", "expert"))
    progress = []
    behaviour = train_behaviour(config, lambda *args: progress.append(args))
    assert [(steps, total) for steps, total, _, _ in progress] == [(7_000, 14_000), (14_000, 14_000)]
    assert [ret for _, _, ret, _ in progress] == behaviour.eval_returns[1:].tolist()
    with pytest.raises(ConfigError, match="tier_size=2000 is not allowed with num_envs=20: 100 steps per env "
                                          "finished no random episode"):
        generate(dataclasses.replace(config, tier_size=2_000, num_envs=20), behaviour)  # episodes last 200 steps
    written = generate(config, behaviour)
    assert {m["behaviour_learner"] for m in written.values()} == {"sac"}
    expert, random = written["expert"], written["random"]
    assert expert["behaviour_env_steps"] == 14_000 and written["medium"]["behaviour_env_steps"] < 14_000
    assert expert["policy_return"] > random["policy_return"] + 400.0, (expert["policy_return"], random["policy_return"])


def test_files_reload_bit_identically_and_the_checksum_is_verified(pendulum_offline, tmp_path):
    path = pendulum_offline.written["medium"]["path"]
    first, metadata = datasets.load(path)
    second, _ = datasets.load(path)
    assert datasets.checksum(host_arrays(first)) == metadata["checksum"]
    assert metadata["checksum"] == pendulum_offline.written["medium"]["checksum"]
    for key in datasets.KEYS:
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    copy = datasets.save(tmp_path / "copy.hdf5", first, {k: v for k, v in metadata.items() if k != "checksum"})
    again, _ = datasets.load(tmp_path / "copy.hdf5")
    assert copy["checksum"] == metadata["checksum"]
    for key in datasets.KEYS:
        assert getattr(again, key).dtype == getattr(first, key).dtype
        np.testing.assert_array_equal(getattr(again, key), getattr(first, key))


def test_a_modified_file_fails_its_checksum_and_a_truncated_one_is_refused(pendulum_offline, tmp_path):
    original = pendulum_offline.written["medium"]["path"]
    before = file_digest(original)
    edited = shutil.copy(original, tmp_path / "edited.hdf5")
    with h5py.File(edited, "r+") as f:
        f["rewards"][5] = f["rewards"][5] + 1.0
    with pytest.raises(DatasetError, match=r"edited\.hdf5: key 'checksum' does not match"):
        datasets.load(edited)
    truncated = tmp_path / "truncated.hdf5"
    with open(original, "rb") as source:
        truncated.write_bytes(source.read()[: os.path.getsize(original) // 2])
    with pytest.raises(DatasetError, match=r"truncated\.hdf5: .*(cannot be read|truncated)"):
        datasets.load(truncated)
    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("not a dataset")
    with pytest.raises(DatasetError, match=r"notes\.hdf5: cannot be read as an HDF5 file"):
        datasets.load(not_hdf5)
    assert file_digest(original) == before


def test_loading_opens_the_file_read_only(pendulum_offline, tmp_path):
    read_only = shutil.copy(pendulum_offline.written["random"]["path"], tmp_path / "read_only.hdf5")
    os.chmod(read_only, stat.S_IRUSR)
    before = file_digest(read_only)
    dataset, metadata = datasets.load(read_only)
    assert dataset.size == 20_000 and metadata["tier"] == "random"
    assert file_digest(read_only) == before


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("damage, key, message", [
    (lambda a: a.pop("rewards"), "rewards", "is missing"),
    (lambda a: a.pop("observations"), "observations", "is missing"),
    (lambda a: a["observations"].__setitem__((4, 1), np.nan), "observations",
     r"NaN or infinite values \(first at row 4\)"),
    (lambda a: a["rewards"].__setitem__(7, np.inf), "rewards", "NaN or infinite"),
    (lambda a: a.__setitem__("actions", a["actions"][:-1]), "actions", "has 11 rows but 'rewards' has 12"),
    (lambda a: a.__setitem__("rewards", np.array([b"1.0"] * 12)), "rewards", "dtype .* is not allowed"),
    (lambda a: a.__setitem__("terminals", np.full(12, 0.5)), "terminals", "must hold 0/1 flags"),
    (lambda a: a.__setitem__("next_observations", np.zeros((12, 4), np.float32)), "next_observations",
     "has shape"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path, damage, key, message):
    arrays = d4rl_arrays()
    arrays["next_observations"] = np.roll(arrays["observations"], -1, axis=0)
    damage(arrays)
    path = write_hdf5(tmp_path / "bad.hdf5", arrays)
    before = file_digest(path)
    with pytest.raises(DatasetError, match=rf"bad\.hdf5: key '{key}' .*{message}"):
        datasets.load(path)
    assert file_digest(path) == before


def test_object_arrays_are_refused_so_nothing_is_ever_unpickled(tmp_path):
    arrays = d4rl_arrays()
    path = tmp_path / "objects.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key != "actions":
                f.create_dataset(key, data=value)
        f.create_dataset("actions", data=np.array(["a"] * 12, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(DatasetError, match=r"objects\.hdf5: key 'actions' has dtype object"):
        datasets.load(path)


def test_a_missing_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError, match="nowhere.hdf5: no such file or folder"):
        datasets.load(tmp_path / "nowhere.hdf5")


# --------------------------------------------------------------------------- other layouts


def test_a_d4rl_file_without_next_observations_is_read_like_qlearning_dataset(tmp_path):
    arrays = d4rl_arrays()  # timeouts at rows 3, 7, 11
    dataset, metadata = datasets.load(write_hdf5(tmp_path / "hopper-medium-v2.hdf5", arrays))
    keep = np.array([i for i in range(11) if i not in (3, 7)])  # rows ending in a timeout, and the last, dropped
    assert metadata["format"] == "d4rl" and dataset.size == 9
    np.testing.assert_array_equal(dataset.observations, arrays["observations"][keep])
    np.testing.assert_array_equal(dataset.next_observations, arrays["observations"][keep + 1])
    np.testing.assert_array_equal(dataset.actions, arrays["actions"][keep])
    assert not np.asarray(dataset.timeouts).any()


def test_a_d4rl_file_with_next_observations_keeps_every_row(tmp_path):
    arrays = d4rl_arrays()
    arrays["next_observations"] = arrays["observations"] + 1.0
    arrays["terminals"][5] = True
    dataset, _ = datasets.load(write_hdf5(tmp_path / "d4rl.hdf5", arrays))
    assert dataset.size == 12 and dataset.terminals.dtype == bool and bool(dataset.terminals[5])
    for key in datasets.KEYS:
        np.testing.assert_array_equal(getattr(dataset, key), arrays[key])


def write_minari(folder, episodes):
    (folder / "data").mkdir(parents=True)
    with h5py.File(folder / "data" / "main_data.hdf5", "w") as f:
        for i, episode in enumerate(episodes):
            group = f.create_group(f"episode_{i}")
            for key, value in episode.items():
                group.create_dataset(key, data=value)
    (folder / "data" / "metadata.json").write_text(json.dumps({"env_spec": json.dumps({"id": "Pendulum-v1"})}))


def minari_episode(steps, terminal, seed):
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(steps + 1, 3)).astype(np.float32),
            "actions": rng.uniform(-2, 2, size=(steps, 1)).astype(np.float32),
            "rewards": rng.normal(size=steps), "terminations": np.arange(steps) == steps - 1 if terminal
            else np.zeros(steps, bool), "truncations": np.zeros(steps, bool) if terminal
            else np.arange(steps) == steps - 1, "infos": None}


def test_a_local_minari_dataset_loads_by_id_from_minari_datasets_path(tmp_path, monkeypatch):
    episodes = [minari_episode(5, True, 0), minari_episode(3, False, 1)]
    for episode in episodes:
        episode.pop("infos")
    write_minari(tmp_path / "rlzoo" / "pendulum" / "medium-v0", episodes)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset, metadata = datasets.load("rlzoo/pendulum/medium-v0")
    assert metadata["format"] == "minari" and metadata["env_id"] == "Pendulum-v1" and dataset.size == 8
    np.testing.assert_array_equal(dataset.observations[:5], episodes[0]["observations"][:-1])
    np.testing.assert_array_equal(dataset.next_observations[5:], episodes[1]["observations"][1:])
    np.testing.assert_array_equal(dataset.terminals, np.arange(8) == 4)
    np.testing.assert_array_equal(dataset.timeouts, np.arange(8) == 7)
    assert dataset.rewards.dtype == np.float32


def test_a_minari_episode_with_a_missing_key_or_wrong_length_is_refused(tmp_path):
    short = minari_episode(4, True, 0)
    short.pop("infos")
    short["observations"] = short["observations"][:-1]
    write_minari(tmp_path / "short", [short])
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: key 'episode_0/observations' has 4 rows; expected 5"):
        datasets.load(tmp_path / "short")
    missing = minari_episode(4, True, 0)
    missing.pop("infos")
    missing.pop("rewards")
    write_minari(tmp_path / "missing", [missing])
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: key 'rewards' is missing from group '/episode_0'"):
        datasets.load(tmp_path / "missing")


# --------------------------------------------------------------------------- using a dataset


def test_normalized_score_is_d4rl_s_formula():
    refs = {"ref_min_score": -1000.0, "ref_max_score": -200.0}
    assert datasets.normalized_score(refs, -600.0) == pytest.approx(50.0)
    np.testing.assert_allclose(datasets.normalized_score(refs, np.array([-1000.0, -200.0, -100.0])), [0, 100, 112.5])
    with pytest.raises(DatasetError, match="ref_min_score"):
        datasets.normalized_score({}, 1.0)


def test_observation_normalisation_standardises_and_is_recorded_for_the_policy(tmp_path):
    arrays = d4rl_arrays(n=200)
    arrays["observations"] = arrays["observations"] * 5.0 + 3.0
    arrays["next_observations"] = arrays["observations"] + 1.0
    dataset, metadata = datasets.load(write_hdf5(tmp_path / "d.hdf5", arrays), normalize_obs=True)
    np.testing.assert_allclose(np.asarray(dataset.observations).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dataset.observations).std(0), 1.0, atol=1e-3)
    stats = datasets.obs_stats(metadata)
    np.testing.assert_allclose(stats.normalize(arrays["next_observations"]), dataset.next_observations, atol=1e-5)


def test_sampled_minibatches_are_whole_rows_of_the_dataset(tmp_path):
    arrays = d4rl_arrays(n=50)
    arrays["next_observations"] = arrays["observations"] + 1.0
    dataset, _ = datasets.load(write_hdf5(tmp_path / "d.hdf5", arrays))
    batch = jax.jit(datasets.sample, static_argnums=2)(dataset, jax.random.PRNGKey(0), 64)
    assert batch.observations.shape == (64, 3) and batch.actions.shape == (64, 2)
    rows = [int(np.flatnonzero((arrays["observations"] == obs).all(1))[0]) for obs in np.asarray(batch.observations)]
    np.testing.assert_array_equal(batch.rewards, arrays["rewards"][rows])
    np.testing.assert_array_equal(batch.actions, arrays["actions"][rows])
    np.testing.assert_array_equal(batch.next_observations, arrays["next_observations"][rows])
    assert len(set(rows)) > 25  # drawn across the dataset, not one row


def test_a_d4rl_file_with_a_short_key_is_refused_before_pairing_rows(tmp_path):
    arrays = d4rl_arrays()
    arrays["actions"] = arrays["actions"][:-2]
    with pytest.raises(DatasetError, match=r"short\.hdf5: key 'actions' has 10 rows but 'rewards' has 12"):
        datasets.load(write_hdf5(tmp_path / "short.hdf5", arrays))


def test_behaviour_envs_and_utd_ratio_reach_the_learner_and_zero_keeps_its_defaults(monkeypatch):
    """walker2d's CPU tiers need SAC at one gradient step per env step (4 envs, utd 4), not the brax default 16/2."""
    from rlzoo.algorithms import ppo, sac
    from rlzoo.experiments.offline_datasets import BEHAVIOUR_LEARNERS, GenerateConfig

    for module in (ppo, sac):
        monkeypatch.setattr(module, "make_train", lambda config: config)  # the learner's config, nothing compiled

    def settings(**options):
        config, _ = BEHAVIOUR_LEARNERS[options.get("learner", "sac")](GenerateConfig(**options))
        return config.num_envs, getattr(config, "utd_ratio", None)

    assert settings(env_id="brax/walker2d", learner="sac") == (16, 2)
    assert settings(env_id="brax/walker2d", learner="sac", behaviour_num_envs=4, behaviour_utd_ratio=4) == (4, 4)
    assert settings(env_id="Pendulum-v1", learner="sac") == (sac.Config().num_envs, sac.Config().utd_ratio)
    assert settings(env_id="Pendulum-v1", learner="sac", behaviour_utd_ratio=3)[1] == 3
    assert settings(env_id="Pendulum-v1", learner="ppo", behaviour_num_envs=8)[0] == 8


@pytest.mark.parametrize("options, message", [
    ({"tiers": ("medium", "hard")}, r"tiers=\('medium', 'hard'\) is not allowed: each one of random, medium"),
    ({"tier_size": 1000, "num_envs": 3}, r"num_envs=3 is not allowed: must be >= 1 and divide tier_size \(1000\)"),
    ({"medium_score": 100.0}, r"medium_score=100.0 is not allowed: must lie in \(0, 100\)"),
    ({"learner": "dqn"}, "learner='dqn' is not allowed: one of ppo, sac"),
    ({"num_snapshots": 2}, r"num_snapshots=2 is not allowed: must be >= 3 \(untrained, at least one medium"),
    ({"behaviour_num_envs": -1}, "behaviour_num_envs=-1 is not allowed: must be >= 0"),
    ({"behaviour_utd_ratio": 4}, "behaviour_utd_ratio=4 is not allowed: must be >= 0, and 0 unless learner is sac"),
])
def test_bad_generation_settings_are_clear_errors(options, message):
    from rlzoo.trainer import ConfigError
    from rlzoo.experiments.offline_datasets import GenerateConfig

    with pytest.raises(ConfigError, match=message):
        GenerateConfig(**options)
