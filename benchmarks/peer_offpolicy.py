"""Time rejax's SAC and TD3 on gymnax Pendulum-v1 with settings matched to rlzoo's.

Run with the PEER venv, not our .venv (rejax needs gymnax 0.0.x; see
benchmarks/requirements-peer.txt):

    .venv-peer/bin/python benchmarks/peer_offpolicy.py --algo sac --num-seeds 4 --num-envs 4 \
        --utd-ratio 1 --total-timesteps 20000

`benchmarks/bench_offpolicy.py --speed` runs this script as a subprocess and
times rlzoo the same way. Settings passed to rejax's public API (`rejax.SAC.create`,
`rejax.TD3.create`): env, total steps, num_envs, batch size, buffer size,
fill_buffer (= our learning_starts), hidden sizes, ReLU, gamma, polyak = 1 - tau,
one gradient step set per vectorised step (`num_epochs` = our utd_ratio).

What rejax cannot match (none of it changes the arithmetic per step much):

* SAC: one learning rate for actor, critic and temperature (we pass 3e-4 to
  both sides); log sigma clipped to [-10, 2] (ours: tanh-squashed into [-5, 2]);
  each gradient step updates the actor before the critics (ours: critics first);
  the Polyak target update happens once per vectorised step (ours: after every
  gradient step; the same when utd_ratio = 1).
* TD3: `create` fixes the hidden sizes at 64x64, so the actor and critics are
  rebuilt with rejax's own `DeterministicPolicy` and `QNetwork` classes at our
  sizes and swapped in with `.replace`; the actor and targets update once per
  `policy_delay` vectorised steps, `num_epochs` times (ours: every `policy_delay`
  gradient steps; the same when utd_ratio = 1).
* Both: gradients pass through `optax.clip(inf)` (a no-op) and default Flax
  initialisers (ours: orthogonal).

The train function is vmapped over `--num-seeds` keys. compile_s is
`jax.jit(vmapped).lower(keys).compile()`; run_s the first call of the compiled
program to `block_until_ready`, run_s_warm a second call. rejax's periodic
evaluation is replaced by a no-op in the timed program (eval_freq = all steps);
final_return is rejax's own evaluation (128 episodes) of each seed's final
policy, after timing, averaged over seeds. One JSON line goes to stdout.
"""

import argparse
import importlib.metadata
import json
import os
import sys
import time

SCHED_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build(args):
    """Returns (rejax algorithm with evaluation switched off, its evaluation callback, env steps per seed)."""
    import flax.linen as nn
    import rejax
    from rejax.networks import DeterministicPolicy, QNetwork

    hidden = tuple(args.hidden_sizes)
    common = dict(
        env=args.env_id, num_envs=args.num_envs, batch_size=args.batch_size, buffer_size=args.buffer_size,
        fill_buffer=args.learning_starts, gamma=args.gamma, polyak=1.0 - args.tau, num_epochs=args.utd_ratio,
        learning_rate=args.lr, skip_initial_evaluation=True,
    )
    if args.algo == "sac":
        per_iteration = args.num_envs
        steps = (args.total_timesteps // per_iteration) * per_iteration
        algo = rejax.SAC.create(**common, total_timesteps=steps, eval_freq=steps, hidden_layer_sizes=hidden,
                                agent_kwargs={"activation": "relu"})
    else:
        per_iteration = args.num_envs * args.policy_delay
        steps = (args.total_timesteps // per_iteration) * per_iteration
        algo = rejax.TD3.create(**common, total_timesteps=steps, eval_freq=steps, policy_delay=args.policy_delay,
                                exploration_noise=args.exploration_noise, target_noise=0.2, target_noise_clip=0.5,
                                actor_kwargs={"activation": "relu"}, critic_kwargs={"activation": "relu"})
        space = algo.env.action_space(algo.env_params)
        algo = algo.replace(
            actor=DeterministicPolicy(int(space.shape[0]), (space.low, space.high), hidden_layer_sizes=hidden,
                                      activation=nn.relu),
            critic=QNetwork(hidden_layer_sizes=hidden, activation=nn.relu))
    rejax_eval = algo.eval_callback
    return algo.replace(eval_callback=lambda algo, ts, rng: ()), rejax_eval, steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=["sac", "td3"], required=True)
    p.add_argument("--env-id", default="Pendulum-v1")
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--total-timesteps", type=int, default=20_000)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--utd-ratio", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--buffer-size", type=int, default=100_000)
    p.add_argument("--learning-starts", type=int, default=2_000)
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 256])
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--policy-delay", type=int, default=2)
    p.add_argument("--exploration-noise", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one-run", action="store_true", help="skip the warm second run")
    args = p.parse_args()

    # The flag rlzoo sets on import, so both sides run one XLA configuration (see peer_ppo.py).
    if SCHED_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SCHED_FLAG}=false".strip()
    import jax
    import jax.numpy as jnp

    algo, rejax_eval, steps = build(args)
    log(f"[peer_offpolicy] rejax {args.algo}: jax {jax.__version__}, {args.num_seeds} seeds, {steps} steps")
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)
    vmapped = jax.vmap(lambda key: algo.train(key)[0])

    start = time.perf_counter()
    compiled = jax.jit(vmapped).lower(keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    ts = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - start
    run_s_warm = None
    if not args.one_run:
        start = time.perf_counter()
        ts = jax.block_until_ready(compiled(keys))
        run_s_warm = time.perf_counter() - start
    log(f"[peer_offpolicy] compile {compile_s:.2f}s, run {run_s:.2f}s, warm {run_s_warm}")

    try:
        _, returns = jax.jit(jax.vmap(lambda t, k: rejax_eval(algo, t, k)))(ts, keys)
        final_return = round(float(jnp.mean(returns)), 2)
    except Exception as e:  # report the timings even if the return cannot be read
        log(f"[peer_offpolicy] final return unavailable: {e!r}")
        final_return = None
    best = run_s if run_s_warm is None else min(run_s, run_s_warm)
    print(json.dumps({
        "peer": "rejax", "algo": args.algo, "env_id": args.env_id, "num_seeds": args.num_seeds,
        "env_steps": steps * args.num_seeds, "compile_s": round(compile_s, 3), "run_s": round(run_s, 3),
        "run_s_warm": None if run_s_warm is None else round(run_s_warm, 3),
        "steps_per_s": round(steps * args.num_seeds / best, 1), "final_return": final_return,
        "rejax": importlib.metadata.version("rejax"), "gymnax": importlib.metadata.version("gymnax"),
        "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }), flush=True)


if __name__ == "__main__":
    main()
