"""Shared test set-up: a persistent XLA compilation cache so that programs compiled
by one test (or an earlier `make test`) are reused, and fixtures that train once
and are shared by every test that checks the result."""

import os
from pathlib import Path

import rlzoo  # noqa: F401  (sets the XLA CPU flag before JAX starts its backend)
import jax

CACHE_DIR = Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))  # for subprocesses
