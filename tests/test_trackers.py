"""TensorBoard and wandb sinks: what they write for fake chunks of metrics, read back from disk."""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from rlzoo.trackers import TensorBoardSink, make_sinks, run_name
from rlzoo.trainer import ConfigError

LABELS = ["lr=0.001", "lr=0.0003"]
NUM_SEEDS = 2
CONFIG = {"algo": "ppo", "config": {"env_id": "CartPole-v1", "num_envs": 4}, "configs": LABELS, "note": "a|b"}
STEPS_PER_UPDATE = 100


def fake_chunk(first_update: int, num_updates: int, num_members: int = 4) -> dict[str, np.ndarray]:
    """Metrics of shape [members, updates] whose values encode (member, update); no episode ends in update 1."""
    member = np.arange(num_members)[:, None]
    update = first_update + 1 + np.arange(num_updates)[None, :]
    episode_return = 10.0 * member + update + 0.5
    episode_return = np.where(update == 1, np.nan, episode_return)
    return {
        "env_steps": np.broadcast_to(update * STEPS_PER_UPDATE, (num_members, num_updates)).astype(np.int32),
        "episode_return": episode_return.astype(np.float32),
        "episode_length": np.broadcast_to(2.0 * update, (num_members, num_updates)).astype(np.float32),
        "policy_loss": (-0.25 * member - 0.01 * update).astype(np.float32),
    }


def read_events(run_dir: Path) -> list:
    """Every Event in a TensorBoard run folder (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


def scalars(events) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_run_name_is_cleanrl_style():
    assert run_name("MinAtar/Breakout", "ppo", 3, timestamp=1700000000.7) == "MinAtar-Breakout__ppo__3__1700000000"
    assert run_name("CartPole-v1", "dqn", 0).startswith("CartPole-v1__dqn__0__")


def test_tensorboard_writes_one_run_per_member_with_cleanrl_tags(tmp_path):
    pytest.importorskip("tensorboardX")
    (sink,) = make_sinks(["tensorboard"], tmp_path, "run", LABELS, NUM_SEEDS, CONFIG)
    with sink:
        sink.write_chunk(0, {**fake_chunk(0, 3), "SPS": np.float32(1234.0)})
        sink.write_chunk(3, fake_chunk(3, 2))
        # Written and flushed at the end of each chunk, before close.
        assert read_events(tmp_path / "tensorboard" / "lr=0.0003__seed1")

    runs = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert runs == ["lr=0.0003__seed0", "lr=0.0003__seed1", "lr=0.001__seed0", "lr=0.001__seed1"]
    for m, (label, seed) in enumerate((label, s) for label in LABELS for s in range(NUM_SEEDS)):
        events = read_events(tmp_path / "tensorboard" / f"{label}__seed{seed}")
        got = scalars(events)
        assert set(got) == {"charts/episodic_return", "charts/episodic_length", "charts/SPS", "losses/policy_loss"}
        updates = range(1, 6)
        assert [s for s, _ in got["losses/policy_loss"]] == [u * STEPS_PER_UPDATE for u in updates]
        assert [v for _, v in got["losses/policy_loss"]] == pytest.approx([-0.25 * m - 0.01 * u for u in updates])
        # NaN (no episode finished yet) is left out, not logged.
        assert got["charts/episodic_return"] == [(u * STEPS_PER_UPDATE, pytest.approx(10.0 * m + u + 0.5))
                                                 for u in range(2, 6)]
        assert [v for _, v in got["charts/episodic_length"]] == pytest.approx([2.0 * u for u in updates])
        assert got["charts/SPS"] == [(u * STEPS_PER_UPDATE, 1234.0) for u in range(1, 4)]

        walltimes = [e.wall_time for e in events if e.summary.value and e.step > 0]
        assert walltimes == sorted(walltimes)
        texts = [v for e in events for v in e.summary.value if v.tag.startswith("hyperparameters")]
        assert len(texts) == 1
        table = texts[0].tensor.string_val[0].decode()
        assert "|config.env_id|CartPole-v1|" in table and f"|member.config|{label}|" in table
        assert f"|member.seed|{seed}|" in table and "|note|a\\|b|" in table
        hparams = [v.tag for e in events for v in e.summary.value if v.tag.startswith("_hparams_/")]
        assert sorted(hparams) == ["_hparams_/experiment", "_hparams_/session_end_info",
                                   "_hparams_/session_start_info"]


def test_tensorboard_single_member_logs_into_the_folder_itself(tmp_path):
    pytest.importorskip("tensorboardX")
    with TensorBoardSink(tmp_path / "tb", ["default"], 1, {"lr": 2.5e-4}) as sink:
        sink.write_chunk(0, fake_chunk(0, 2, num_members=1))
    assert [p for p in (tmp_path / "tb").iterdir() if p.is_dir()] == []
    got = scalars(read_events(tmp_path / "tb"))
    assert got["charts/episodic_return"] == [(200, pytest.approx(2.5))]


def test_tensorboard_purge_step_marks_the_resume_point(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import SessionLog

    with TensorBoardSink(tmp_path, ["default"], 1, {}, purge_step=301) as sink:
        sink.write_chunk(3, fake_chunk(3, 1, num_members=1))
    starts = [e.step for e in read_events(tmp_path) if e.session_log.status == SessionLog.START]
    assert starts == [301]


def read_wandb_records(path: Path) -> list:
    """Records of a `.wandb` transaction log (LevelDB log format after a 7-byte ":W&B" header)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = payload if kind in (1, 2) else pending + payload  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(log_dir: Path, expected_rows: int, timeout_s: float = 60.0) -> tuple[list, list]:
    """The records and history rows of the one offline run under `log_dir`, once all `expected_rows` are on disk.

    wandb's service process writes the `.wandb` log; on a loaded machine its last records
    can land a moment after `run.finish()` returns, so this polls until they are there.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        (log,) = log_dir.glob("offline-run-*/run-*.wandb")
        records = read_wandb_records(log)
        history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
        if len(history) >= expected_rows or time.monotonic() > deadline:
            return records, history
        time.sleep(0.2)


def item_key(item) -> str:
    """A history or config item's key (this wandb version fills `nested_key`, older ones `key`)."""
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb_config", "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                        "WANDB_DATA_DIR": tmp_path / "wandb_data"}.items():
        monkeypatch.setenv(name, str(value))
    return wandb


def test_wandb_offline_run_holds_config_and_grouped_keys_per_member(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    name = run_name("CartPole-v1", "ppo", 0, timestamp=1700000000)
    (sink,) = make_sinks(["wandb"], run_dir, name, LABELS, NUM_SEEDS, CONFIG, wandb_project="rlzoo-test")
    with sink:
        sink.write_chunk(0, fake_chunk(0, 3))
        sink.write_chunk(3, fake_chunk(3, 2))

    records, history = wandb_history(run_dir / "wandb", expected_rows=5)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == name and run.project == "rlzoo-test"
    updates = [*run.config.update, *(u for r in records if r.WhichOneof("record_type") == "config"
                                     for u in r.config.update)]
    config = {item_key(u): json.loads(u.value_json) for u in updates}
    assert config["config"] == CONFIG["config"] and config["configs"] == LABELS

    assert [h.step.num for h in history] == [u * STEPS_PER_UPDATE for u in range(1, 6)]
    rows = [{item_key(i): json.loads(i.value_json) for i in h.item} for h in history]
    for u, row in enumerate(rows, start=1):
        for m, (label, seed) in enumerate((label, s) for label in LABELS for s in range(NUM_SEEDS)):
            prefix = f"{label}/seed{seed}/"
            assert row[prefix + "losses/policy_loss"] == pytest.approx(-0.25 * m - 0.01 * u)
            assert row[prefix + "charts/episodic_length"] == pytest.approx(2.0 * u)
            if u == 1:
                assert prefix + "charts/episodic_return" not in row
            else:
                assert row[prefix + "charts/episodic_return"] == pytest.approx(10.0 * m + u + 0.5)
    assert not any(key.startswith("charts/") or key == "env_steps" for key in rows[0])


def test_wandb_single_member_uses_plain_cleanrl_keys(tmp_path, wandb_offline):
    (sink,) = make_sinks("wandb", tmp_path, "single", ["default"], 1, {"lr": 2.5e-4})
    with sink:
        sink.write_chunk(0, fake_chunk(0, 2, num_members=1))
    _, history = wandb_history(tmp_path / "wandb", expected_rows=2)
    assert [h.step.num for h in history] == [100, 200]
    keys = {item_key(i) for i in history[-1].item if not item_key(i).startswith("_")}
    assert keys == {"charts/episodic_return", "charts/episodic_length", "losses/policy_loss"}


def test_wandb_login_failure_is_a_config_error(tmp_path, wandb_offline, monkeypatch):
    pytest.importorskip("tensorboardX")

    def no_login(**kwargs):
        raise wandb_offline.errors.UsageError("No API key configured.")

    monkeypatch.setattr(wandb_offline, "init", no_login)
    with pytest.raises(ConfigError, match="wandb login.*WANDB_MODE=offline"):
        make_sinks(["tensorboard", "wandb"], tmp_path, "run", ["default"], 1, {})
    assert not (tmp_path / "tensorboard").exists()


def test_unknown_backend_names_the_flag_and_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"log='mlflow' is not allowed: choose from tensorboard, wandb"):
        make_sinks(["tensorboard", "mlflow"], tmp_path, "run", ["default"], 1, {})
    assert list(tmp_path.iterdir()) == []
    assert make_sinks([], tmp_path, "run", ["default"], 1, {}) == []


@pytest.mark.parametrize("backend, module", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_missing_package_names_the_pip_extra(tmp_path, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ConfigError, match=rf'--log={backend} needs the {module} package.*'
                                          rf'pip install "rlzoo\[{backend}\]"'):
        make_sinks([backend], tmp_path, "run", ["default"], 1, {})


def test_a_missing_package_is_found_before_any_sink_is_made(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r'pip install "rlzoo\[wandb\]"'):
        make_sinks(["tensorboard", "wandb"], tmp_path, "run", ["default"], 1, {})
    assert list(tmp_path.iterdir()) == []


def test_member_count_mismatch_is_refused(tmp_path):
    pytest.importorskip("tensorboardX")
    with TensorBoardSink(tmp_path, LABELS, NUM_SEEDS, {}) as sink:
        with pytest.raises(ValueError, match="3 members"):
            sink.write_chunk(0, fake_chunk(0, 1, num_members=3))
