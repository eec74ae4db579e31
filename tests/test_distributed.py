"""Facts about multi-host sweeps: two local processes (`jax.distributed` on CPU, loopback only) split the
members of one sweep between them, and put together they equal the single-process `run_sweep`."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rlzoo.trainer import ConfigError
from rlzoo.distributed import check_member_split

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
SWEEP = 'make_train(Config(total_timesteps=16 * 512)), HParams(), {"lr": [3e-4, 1e-3]}, seed=0, num_seeds=2'

# One process of a 2-process job with 1 CPU device each: argv = port, process id, output, mode.
PROCESS_SCRIPT = textwrap.dedent(f"""
    import sys
    import rlzoo
    import jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 1)
    from rlzoo.distributed import initialize, run_sweep_multihost
    from rlzoo.trainer import ConfigError
    port, process_id, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    address = f"127.0.0.1:{{port}}"
    # gloo (JAX's CPU collectives) would listen where this machine's hostname resolves; keep it on loopback.
    from jax._src import xla_bridge
    make_gloo = xla_bridge._jax.make_gloo_tcp_collectives
    xla_bridge._jax.make_gloo_tcp_collectives = lambda **kw: make_gloo(**kw, hostname="127.0.0.1")
    initialize(address, 2, process_id, coordinator_bind_address=address, initialization_timeout=120)
    from rlzoo.algorithms.ppo import Config, HParams, make_train
    try:  # 1 configuration x 3 seeds over 2 devices: refused before anything is compiled
        run_sweep_multihost(make_train(Config(total_timesteps=16 * 512)), HParams(), {{"lr": [3e-4]}},
                            seed=0, num_seeds=3)
        error = ""
    except ConfigError as e:
        error = str(e)
    labels, members, (state, metrics) = run_sweep_multihost({SWEEP}, gather=mode == "gather")
    params = np.concatenate([x.reshape(len(members), -1) for x in jax.tree.leaves(state.params)], axis=1)
    np.savez(out, members=members, labels=np.array(labels), global_devices=len(jax.devices()),
             local_devices=len(jax.local_devices()), error=error, params=params, **metrics)
""")

SINGLE_SCRIPT = textwrap.dedent(f"""
    import sys
    import rlzoo
    import jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 1)
    from rlzoo.algorithms.ppo import Config, HParams, make_train
    from rlzoo.sweep import run_sweep
    result = run_sweep({SWEEP})
    state, metrics = jax.device_get(result.outputs)
    params = np.concatenate([np.asarray(x).reshape(4, -1) for x in jax.tree.leaves(state.params)], axis=1)
    np.savez(sys.argv[1], labels=np.array(result.labels), params=params, **{{k: np.asarray(v) for k, v in metrics.items()}})
""")


def _env():
    # gRPC (the coordinator) honours proxy variables; nothing here should leave the machine.
    env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower()}
    return {**env, "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    """A port free now; another process may take it before the coordinator binds it (see `_run_two_processes`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BIND_FAILED = ("failed to add port to server", "failed to start rpc server", "address already in use")  # gRPC's words


def _run_two_processes(tmp_path: Path, mode: str, attempts: int = 3) -> list:
    """Runs the 2-process job; if the coordinator's port was taken in between, again on a fresh port."""
    for attempt in range(attempts):
        try:
            return _run_two_processes_once(tmp_path, mode, _free_port())
        except AssertionError as error:
            if attempt == attempts - 1 or not any(s in str(error).lower() for s in BIND_FAILED):
                raise
    raise AssertionError("unreachable")


def _run_two_processes_once(tmp_path: Path, mode: str, port: int) -> list:
    procs, logs = [], []
    try:
        for pid in (0, 1):
            log = open(tmp_path / f"{mode}{pid}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-c", PROCESS_SCRIPT, str(port), str(pid), str(tmp_path / f"{mode}{pid}.npz"), mode],
                env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        while None in [p.poll() for p in procs]:  # a list, so that every process is polled
            failed = [pid for pid, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                reason = f"process {failed[0]} failed" if failed else f"timed out after {TIMEOUT_S} s"
                raise AssertionError(f"{reason}:\n" + "\n".join(
                    f"--- process {pid} ---\n" + (tmp_path / f"{mode}{pid}.log").read_text()[-3000:]
                    for pid in (0, 1)))
            time.sleep(0.5)
        for pid, p in enumerate(procs):
            assert p.returncode == 0, (tmp_path / f"{mode}{pid}.log").read_text()[-3000:]
    finally:
        for p in procs:  # only the two processes started here
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    return [dict(np.load(tmp_path / f"{mode}{pid}.npz")) for pid in (0, 1)]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.npz"
    subprocess.run([sys.executable, "-c", SINGLE_SCRIPT, str(out)], check=True, env=_env(), cwd=ROOT,
                   timeout=TIMEOUT_S)
    return dict(np.load(out))


def test_two_processes_split_the_members_and_together_equal_one_process(tmp_path, single_process):
    parts = _run_two_processes(tmp_path, "local")
    for part in parts:
        assert int(part["global_devices"]) == 2 and int(part["local_devices"]) == 1
        assert list(part["labels"]) == list(single_process["labels"]) == ["lr=0.0003", "lr=0.001"]
    first, second = (set(part["members"].tolist()) for part in parts)
    assert first and second and not first & second and first | second == {0, 1, 2, 3}
    for name in ("episode_return", "value_loss", "policy_loss", "params"):
        together = np.empty_like(single_process[name])
        for part in parts:
            assert part[name].shape[0] == len(part["members"]), name
            together[part["members"]] = part[name]
        # Partitioned programs may order float sums differently: equal to float32 rounding.
        np.testing.assert_allclose(together, single_process[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The learning rates really differ between configurations.
    assert not np.allclose(single_process["params"][0], single_process["params"][2])
    # A member count the global devices don't divide is refused, naming num_seeds and the device count.
    for part in parts:
        error = str(part["error"])
        assert "num_seeds=3" in error and "2 devices" in error and "3 members" in error, error


def test_gather_gives_both_processes_all_members(tmp_path, single_process):
    for part in _run_two_processes(tmp_path, "gather"):
        np.testing.assert_array_equal(part["members"], [0, 1, 2, 3])
        for name in ("episode_return", "params"):
            np.testing.assert_allclose(part[name], single_process[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_member_count_must_divide_over_the_devices():
    assert check_member_split(num_configs=2, num_seeds=2, num_devices=4, num_processes=2) == 1
    assert check_member_split(num_configs=3, num_seeds=4, num_devices=2) == 6
    with pytest.raises(ConfigError, match=r"num_seeds=3 .*6 members .*4 devices"):
        check_member_split(num_configs=2, num_seeds=3, num_devices=4, num_processes=2)
    with pytest.raises(ConfigError, match=r"num_seeds=0 .*>= 1"):
        check_member_split(num_configs=2, num_seeds=0, num_devices=1)
