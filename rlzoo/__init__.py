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
