"""Time peer PPO implementations (rejax, PureJaxRL) on gymnax CartPole-v1.

Run with the PEER venv, not our .venv: the peers need gymnax 0.0.x (five values
from ``env.step``); see benchmarks/requirements-peer.txt.

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install -r benchmarks/requirements-peer.txt
    .venv-peer/bin/python benchmarks/peer_ppo.py --peer rejax --num-seeds 16
    .venv-peer/bin/python benchmarks/peer_ppo.py --peer purejaxrl \
        --purejaxrl-dir /tmp/purejaxrl --num-seeds 16

``--purejaxrl-dir`` is a checkout of github.com/luchris429/purejaxrl (the repo
root or its inner ``purejaxrl/`` folder holding ppo.py and wrappers.py); it is
put on sys.path and its ``make_train`` is imported. It is never vendored here.

Both peers use PureJaxRL's CartPole defaults (lr 2.5e-4 linearly annealed,
4 envs x 128 steps, 4 epochs x 4 minibatches, gamma 0.99, GAE lambda 0.95,
clip 0.2, ent 0.01, vf 0.5, max grad norm 0.5, tanh 2x64 separate actor and
critic). The train function is vmapped over ``--num-seeds`` PRNG keys and timed:

* compile_s: wall time of ``jax.jit(vmapped).lower(keys).compile()``
  (tracing + lowering + XLA compilation).
* run_s: first call of the compiled executable, ``jax.block_until_ready``.
* run_s_warm: a second call of the same executable (omitted with --one-run).

final_return: PureJaxRL -- mean return of the training episodes logged in the
last update (its LogWrapper); rejax -- it logs no training returns, so after
timing, its own evaluation (128 episodes, sampled actions) of each seed's
final policy. Both are averaged over seeds.

Exactly one JSON line goes to stdout; all logging goes to stderr. By default
(--xla-sched-workaround=on) both peers run with
--xla_cpu_enable_concurrency_optimized_scheduler=false, the flag rlzoo itself
sets on import, so all three share one XLA configuration. PureJaxRL needs it
(without it a multi-seed run hangs on a 2-core CPU under jaxlib 0.10.2; see
main()); rejax does not, and "auto" leaves it off for rejax.
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import types

SCHED_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"

# PureJaxRL's CartPole-v1 defaults (purejaxrl/ppo.py __main__).
DEFAULTS = dict(
    lr=2.5e-4, num_envs=4, num_steps=128, update_epochs=4, num_minibatches=4,
    gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5,
    max_grad_norm=0.5,
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build_rejax(total_timesteps):
    """Return (train(key) -> out, final_return(out, keys) -> float)."""
    import jax
    import jax.numpy as jnp
    import rejax

    c = DEFAULTS
    batch = c["num_envs"] * c["num_steps"]
    num_updates = total_timesteps // batch
    steps = num_updates * batch  # 5e5 -> 976 updates, same as PureJaxRL

    def lr_schedule(count):  # PureJaxRL's linear_schedule, per optimizer step
        frac = 1.0 - (count // (c["num_minibatches"] * c["update_epochs"])) / num_updates
        return c["lr"] * frac

    algo = rejax.PPO.create(
        env="CartPole-v1",
        total_timesteps=steps,
        # Evaluation: rejax's train() is a scan over ceil(total/eval_freq)
        # chunks, each a fori_loop of PPO iterations followed by eval_callback
        # (by default 128 full episodes, up to 500 steps each). We set
        # eval_freq = total steps (one chunk of exactly num_updates
        # iterations), skip the initial evaluation, and replace eval_callback
        # with a no-op below, so the timed train() does no evaluation at all.
        eval_freq=steps,
        skip_initial_evaluation=True,
        num_envs=c["num_envs"],
        num_steps=c["num_steps"],
        num_epochs=c["update_epochs"],
        num_minibatches=c["num_minibatches"],
        # rejax passes learning_rate straight to optax.adam, which accepts a
        # schedule; this reproduces PureJaxRL's annealing.
        learning_rate=lr_schedule,
        gamma=c["gamma"],
        gae_lambda=c["gae_lambda"],
        clip_eps=c["clip_eps"],
        ent_coef=c["ent_coef"],
        vf_coef=c["vf_coef"],
        # NB: rejax applies this with optax.clip (element-wise), not
        # clip_by_global_norm as PureJaxRL does; not configurable.
        max_grad_norm=c["max_grad_norm"],
        normalize_observations=False,
        normalize_rewards=False,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": (64, 64)},
    )
    rejax_eval = algo.eval_callback
    algo = algo.replace(eval_callback=lambda algo, ts, rng: ())

    def train(key):
        ts, _ = algo.train(key)
        return ts

    def final_return(ts, keys):
        # Not timed: rejax's own evaluation (128 episodes, sampled actions) of
        # each seed's final policy.
        ev = jax.jit(jax.vmap(lambda t, k: rejax_eval(algo, t, k)))(ts, keys)
        _, returns = ev
        return float(jnp.mean(returns))

    return train, final_return


def _stub_missing(names):
    """PureJaxRL's wrappers.py imports brax and navix at module level for its
    Brax/Navix wrappers, which the gymnax CartPole path never uses. If they are
    not installed, register empty placeholder modules so the import succeeds."""
    for name in names:
        root = name.split(".")[0]
        if root in sys.modules or importlib.util.find_spec(root) is not None:
            continue
        parent = None
        for i, part in enumerate(name.split(".")):
            full = ".".join(name.split(".")[: i + 1])
            mod = sys.modules.get(full) or types.ModuleType(full)
            mod.__getattr__ = lambda attr, _n=full: _unavailable(_n, attr)
            sys.modules[full] = mod
            if parent is not None:
                setattr(parent, part, mod)
            parent = mod
        log(f"[peer_ppo] {root} not installed; using a placeholder module")


def _unavailable(mod, attr):
    if attr.startswith("__"):
        raise AttributeError(attr)

    def fail(*a, **k):
        raise ImportError(f"{mod}.{attr} is a placeholder ({mod} not installed)")

    return fail


def load_purejaxrl(purejaxrl_dir):
    """PureJaxRL's ppo module from a checkout (the repo root or its inner purejaxrl/ folder)."""
    d = os.path.abspath(purejaxrl_dir)
    if os.path.isfile(os.path.join(d, "purejaxrl", "ppo.py")):
        d = os.path.join(d, "purejaxrl")
    if not os.path.isfile(os.path.join(d, "ppo.py")):
        sys.exit(f"no ppo.py under {purejaxrl_dir}")
    sys.path.insert(0, d)
    _stub_missing(["brax.envs.wrappers.training", "navix"])
    return importlib.import_module("ppo")


def build_purejaxrl(total_timesteps, purejaxrl_dir):
    ppo = load_purejaxrl(purejaxrl_dir)
    import jax.numpy as jnp

    c = DEFAULTS
    config = {
        "LR": c["lr"],
        "NUM_ENVS": c["num_envs"],
        "NUM_STEPS": c["num_steps"],
        "TOTAL_TIMESTEPS": int(total_timesteps),  # int: used as a scan length
        "UPDATE_EPOCHS": c["update_epochs"],
        "NUM_MINIBATCHES": c["num_minibatches"],
        "GAMMA": c["gamma"],
        "GAE_LAMBDA": c["gae_lambda"],
        "CLIP_EPS": c["clip_eps"],
        "ENT_COEF": c["ent_coef"],
        "VF_COEF": c["vf_coef"],
        "MAX_GRAD_NORM": c["max_grad_norm"],
        "ACTIVATION": "tanh",
        "ENV_NAME": "CartPole-v1",
        "ANNEAL_LR": True,
        "DEBUG": False,  # True adds a host callback printing every episode
    }
    train = ppo.make_train(config)

    def final_return(out, keys):
        # Training episodes (LogWrapper): mean of returned_episode_returns over
        # the last update's rollout, as in PureJaxRL's own plots.
        r = out["metrics"]["returned_episode_returns"]  # (seeds, updates, steps, envs)
        return float(jnp.mean(r[:, -1]))

    return train, final_return


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", choices=["rejax", "purejaxrl"], required=True)
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--total-timesteps", type=int, default=500_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--purejaxrl-dir", default=None)
    p.add_argument("--one-run", action="store_true", help="skip the warm second run")
    p.add_argument("--xla-sched-workaround", choices=["on", "auto", "off"], default="on",
                   help="append %s=false to XLA_FLAGS, as rlzoo does (auto: PureJaxRL only)"
                   % SCHED_FLAG)
    args = p.parse_args()

    # jaxlib 0.10.2 on this 2-core CPU deadlocks when two vmapped LAPACK custom
    # calls run at once -- here the batched QRs behind PureJaxRL's orthogonal
    # actor and critic initialisers: each one blocks an intra-op pool thread
    # waiting for chunks it queued on that same pool, so with both threads
    # blocked nothing runs (1 seed is fine: the batch is not split). XLA's
    # concurrency-optimised scheduler is what lets the two QRs overlap;
    # turning it off avoids the hang. rlzoo sets the same flag on import, so
    # it is on by default here too. rejax uses no orthogonal init, never hits
    # the hang, and runs ~10% faster at 16 seeds with the default scheduler;
    # "auto" applies the workaround to PureJaxRL only. Must be set before jax
    # is imported; the flags in effect go into the JSON line.
    if args.xla_sched_workaround == "on" or (
        args.xla_sched_workaround == "auto" and args.peer == "purejaxrl"
    ):
        if SCHED_FLAG not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SCHED_FLAG}=false".strip()
    import jax

    if args.peer == "rejax":
        train, final_return = build_rejax(args.total_timesteps)
    else:
        if not args.purejaxrl_dir:
            p.error("--peer purejaxrl needs --purejaxrl-dir")
        train, final_return = build_purejaxrl(args.total_timesteps, args.purejaxrl_dir)

    log(f"[peer_ppo] {args.peer}: jax {jax.__version__} on {jax.devices()}, "
        f"{os.cpu_count()} CPUs, {args.num_seeds} seeds, {args.total_timesteps} steps")
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)
    vmapped = jax.vmap(train)

    t0 = time.perf_counter()
    compiled = jax.jit(vmapped).lower(keys).compile()
    compile_s = time.perf_counter() - t0
    log(f"[peer_ppo] compile {compile_s:.2f}s")

    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - t0
    log(f"[peer_ppo] run {run_s:.2f}s")

    run_s_warm = None
    if not args.one_run:
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys))
        run_s_warm = time.perf_counter() - t0
        log(f"[peer_ppo] warm run {run_s_warm:.2f}s")

    try:
        ret = final_return(out, keys)
    except Exception as e:  # report timings even if the return can't be read
        log(f"[peer_ppo] final return unavailable: {e!r}")
        ret = None
    log(f"[peer_ppo] final return {ret}")

    result = {
        "peer": args.peer,
        "num_seeds": args.num_seeds,
        "total_timesteps": args.total_timesteps,
        "compile_s": round(compile_s, 3),
        "run_s": round(run_s, 3),
        "run_s_warm": None if run_s_warm is None else round(run_s_warm, 3),
        "final_return": None if ret is None else round(ret, 2),
        "jax": jax.__version__,
        "gymnax": importlib.metadata.version("gymnax"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
