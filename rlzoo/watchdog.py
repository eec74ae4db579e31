"""A hang never stays silent: a watchdog thread for the run harness's chunk loop.

The harness calls `beat()` each time a chunk's outputs are written. Once a chunk
has been written, a chunk that takes `factor` times longer than the slowest
one before it (and at least `floor_s`) is taken for a hang, such as the XLA CPU
deadlocks of batched LAPACK calls seen on small machines (`rlzoo/__init__.py`):
the watchdog writes every thread's Python stack and, where a tool for it is
installed (py-spy, else gdb), the native stacks to `hang-<time>.txt` in the run
folder, prints one line naming that file, and ends the process with exit code
3. The checkpoints written so far stay, so `--resume` continues the run.

The defaults (50x, at least 10 minutes) are wide on purpose: a deadlock lasts forever, so a late alarm costs
little, while chunks differ honestly (a replay learner's chunks before `learning_starts` only act, and the
first one that trains can be tens of times slower); a false alarm would kill a healthy run.

Not here: what a chunk is (`rlzoo.runner`).
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HANG_EXIT_CODE = 3


def native_stacks(pid: int, timeout_s: int = 30) -> str:
    """Every thread's native stack from py-spy or gdb, whichever is installed; a note if neither is.

    The tool stops every thread of this process while it reads them, the caller's timer included, so the time
    limit is enforced from outside, by coreutils' `timeout`."""
    beside_python = Path(sys.executable).parent / "py-spy"
    py_spy = shutil.which("py-spy") or (str(beside_python) if beside_python.exists() else None)
    commands = [[py_spy, "dump", "--native", "--pid", str(pid)]] if py_spy else []
    if shutil.which("gdb"):
        commands.append(["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "thread apply all bt"])
    if not commands:
        return "native stacks: neither py-spy nor gdb is installed (pip install py-spy for them next time)"
    if not shutil.which("timeout"):
        return "native stacks: skipped, coreutils' timeout is missing to bound the debugger"
    reports = []
    for command in commands:
        try:
            done = subprocess.run(["timeout", "-s", "KILL", str(timeout_s), *command], capture_output=True, text=True)
        except OSError as error:
            reports.append(f"$ {' '.join(command)}\nfailed: {error}")
            continue
        reports.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        if done.returncode == 0:
            break  # one readable dump is enough
    return "\n".join(reports)


class Watchdog:
    """Watches the gaps between `beat()`s from a daemon thread (module docstring)."""

    def __init__(self, run_dir: Path, factor: float = 50.0, floor_s: float = 600.0, poll_s: float = 1.0,
                 on_hang: Callable[[str], None] | None = None):
        self.run_dir, self.factor, self.floor_s, self.poll_s = Path(run_dir), factor, floor_s, poll_s
        self.on_hang = on_hang or self._exit
        self.last_beat = time.monotonic()
        self.slowest_s = 0.0
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rlzoo-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        """Starts watching (not with factor 0); the first chunk starts now."""
        if self.factor > 0:
            self.last_beat = time.monotonic()
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def beat(self) -> None:
        """A chunk's outputs were written."""
        now = time.monotonic()
        self.slowest_s = max(self.slowest_s, now - self.last_beat)
        self.last_beat, self.beats = now, self.beats + 1

    def limit_s(self) -> float | None:
        """How long the chunk in flight may take; None before the first chunk is written (nothing to compare)."""
        return max(self.factor * self.slowest_s, self.floor_s) if self.beats else None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            limit = self.limit_s()
            waited = time.monotonic() - self.last_beat
            if limit is not None and waited > limit:
                self.on_hang(self._report(waited, limit))
                return

    def _report(self, waited: float, limit: float) -> str:
        """Writes the Python stacks, then the native ones, to the run folder; returns the one-line message."""
        path = self.run_dir / f"hang-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        with path.open("w") as out:
            out.write(f"no chunk finished for {waited:.0f} s after chunk {self.beats}'s outputs were written; the "
                      f"slowest chunk before took {self.slowest_s:.1f} s (limit {limit:.0f} s)\n\nPython stacks:\n")
            out.flush()
            faulthandler.dump_traceback(out, all_threads=True)
            out.write("\nNative stacks:\n")
            out.flush()
            out.write(native_stacks(os.getpid()) + "\n")
        return (f"error: no chunk finished for {waited:.0f} s after chunk {self.beats}, over {self.factor:g}x the "
                f"slowest chunk before ({self.slowest_s:.1f} s): the run looks hung. Stacks written to {path}; the checkpoints "
                f"written so far are kept (continue with --resume {self.run_dir}); --hang-factor 0 turns this off")

    @staticmethod
    def _exit(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        os._exit(HANG_EXIT_CODE)
