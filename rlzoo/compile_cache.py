"""JAX's persistent compilation cache for command-line runs: programs compile once per machine.

A CLI run (`rlzoo.runner.run_cli`) turns the cache on, so that a second run of
the same program loads the compiled executables instead of compiling them again.
The folder, first match wins:

1. a folder JAX already has (`jax_compilation_cache_dir`, or `JAX_COMPILATION_CACHE_DIR`):
   the caller's choice is kept (the tests set their own);
2. `$RLZOO_COMPILE_CACHE_DIR`;
3. `$XDG_CACHE_HOME/rlzoo/jax`, else `~/.cache/rlzoo/jax`.

Off: `--no-compile-cache`, or `RLZOO_COMPILE_CACHE=0`. Entries are keyed by the
program, the jax/jaxlib version, the backend and the compile options, so a stale
entry is never loaded; delete the folder to reclaim its space. The run's own
programs (init, chunk, evaluation) are compiled inside `CacheUse`, which stores
each of them however fast it compiled and counts hits and misses for
`summary.json`; JAX's threshold (1 s by default) still keeps the many tiny eager
programs out of the cache.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache

DIR_VARIABLE, SWITCH_VARIABLE = "RLZOO_COMPILE_CACHE_DIR", "RLZOO_COMPILE_CACHE"
HIT_EVENT, MISS_EVENT = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def default_cache_dir() -> Path:
    """$RLZOO_COMPILE_CACHE_DIR, else the user cache folder's rlzoo/jax."""
    if os.environ.get(DIR_VARIABLE):
        return Path(os.environ[DIR_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rlzoo" / "jax"


def switched_off_by_environment() -> bool:
    return os.environ.get(SWITCH_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off")


def enable_compile_cache(wanted: bool) -> str | None:
    """Turns the persistent cache on (unless `wanted` is False or the environment says off); returns its folder."""
    if not wanted or switched_off_by_environment():
        if jax.config.jax_enable_compilation_cache:
            jax.config.update("jax_enable_compilation_cache", False)
            compilation_cache.reset_cache()
        return None
    folder = jax.config.jax_compilation_cache_dir  # JAX reads JAX_COMPILATION_CACHE_DIR into it at import
    if not folder:
        folder = str(default_cache_dir())
        Path(folder).mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != folder or not jax.config.jax_enable_compilation_cache:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", folder)
        compilation_cache.reset_cache()  # JAX decides once whether to use a cache: at its first compile
    return folder


class CacheUse:
    """While open, every compile is stored in the cache; the time spent and the hits and misses are counted.

    `with use: compiled = jax.jit(f).lower(x).compile()`, then `use.seconds`, `use.hits`, `use.misses`.
    """

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0
        self._min_compile_s = None
        self._start = 0.0

    def _count(self, event: str, **_: object) -> None:
        if event == HIT_EVENT:
            self.hits += 1
        elif event == MISS_EVENT:
            self.misses += 1

    def __enter__(self) -> CacheUse:
        self._min_compile_s = jax.config.jax_persistent_cache_min_compile_time_secs
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        monitoring.register_event_listener(self._count)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start
        monitoring.unregister_event_listener(self._count)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", self._min_compile_s)
