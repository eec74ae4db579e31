"""rlzoo: a JAX reinforcement-learning algorithm zoo (see README.md).

Importing rlzoo sets one XLA flag, before JAX creates its CPU client, unless the
caller set it already: jaxlib 0.10 on small CPU machines can deadlock when two
batched LAPACK calls (the QR behind orthogonal initialisation, vmapped over
seeds) run at once, each waiting on the other's thread pool; the sequential
scheduler avoids it. It has no effect on GPU or TPU programs.
"""

import os

_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_SCHEDULER_FLAG}=false".strip()

__version__ = "0.1.0"


def require_usable_backend() -> None:
    """Exits with one clear line, not a traceback, when `JAX_PLATFORMS` names a backend JAX cannot start here
    (`JAX_PLATFORMS=cuda` on a machine without a GPU or without JAX's CUDA plugin).

    Called by `rlzoo.envs` before it imports gymnax, which starts JAX's backend anyway (it builds arrays at
    import), so the check adds no side effect. A wrong `XLA_FLAGS` entry is reported by XLA itself
    ("Unknown flag in XLA_FLAGS: ...") before it stops the process; nothing in Python can catch that.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms in ("", "cpu"):
        return
    import jax

    try:
        jax.devices()
    except Exception as error:  # RuntimeError, or a bare AssertionError for a platform with no plugin
        import sys

        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: JAX_PLATFORMS={platforms!r}: JAX cannot start that backend on this machine ({reason}); "
              f"allowed: unset JAX_PLATFORMS (JAX then uses a working GPU or TPU, else the CPU), JAX_PLATFORMS=cpu, "
              f"or install the backend's plugin (pip install -U 'jax[cuda12]' for NVIDIA GPUs)", file=sys.stderr)
        raise SystemExit(2) from None
