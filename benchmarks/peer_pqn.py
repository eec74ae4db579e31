"""Train purejaxql's PQN (MinAtar script and config) and score it as rlzoo's benchmarks score ours.

Run with the PEER venv (gymnax 0.0.x), from a purejaxql checkout outside this repository:

    .venv-peer/bin/python benchmarks/peer_pqn.py --purejaxql-dir /tmp/purejaxql \\
        --env-id Breakout-MinAtar --total-timesteps 2000000 --num-seeds 5 > pqn_peer.json

`--purejaxql-dir` is a checkout of github.com/mttga/purejaxql (the repo root, holding
`purejaxql/pqn_minatar.py` and `purejaxql/config/alg/pqn_minatar.yaml`); its `make_train` is
imported and run unchanged with that YAML's hyperparameters, except:

* TOTAL_TIMESTEPS and TOTAL_TIMESTEPS_DECAY = `--total-timesteps` (so epsilon's and the learning
  rate's schedules span the run, as ours do);
* TEST_DURING_TRAINING off (`--test-during-training` turns it on): its greedy test is 128 envs x
  1000 steps every 5% of the updates, more env steps than a 2e6-step run trains on, so timing
  with it on measures mostly evaluation (the benchmark README gives both);
* WANDB_MODE disabled. hydra, omegaconf and wandb are replaced by placeholder modules when they
  are not installed (only purejaxql's command-line entry point uses them).

All seeds are one `jax.jit(jax.vmap(train))` program (purejaxql's own way), keys
`jax.random.split(PRNGKey(seed), num_seeds)`; compile and run are timed apart. The score of a seed,
as in rlzoo's benchmarks (`rlzoo.evaluate.greedy_member_returns`): the mean return of
`--eval-episodes` greedy episodes (epsilon 0, the first episode of each of that many parallel envs,
at most max_steps_in_episode steps) of the final network. Exactly one JSON line goes to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import types

from peer_ppo import SCHED_FLAG, log


def placeholder_modules() -> None:
    """hydra, omegaconf and wandb, if missing, as modules good enough for importing pqn_minatar.py."""
    def missing(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise ImportError(f"{attr} belongs to a placeholder module (its package is not installed)")
        return unavailable

    for name in ("hydra", "omegaconf", "wandb"):
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.__getattr__ = missing
            if name == "hydra":
                module.main = lambda **kwargs: (lambda function: function)  # the decorator on its main()
            sys.modules[name] = module
            log(f"[peer_pqn] {name} not installed; using a placeholder module")


def matmul_conv():
    """A module class standing in for flax's `nn.Conv`: the same 3x3 convolution written as one matmul over
    shifted copies (im2col).

    Same parameters (kernel [3, 3, C, F], bias) and outputs up to float rounding, so a peer's algorithm is
    unchanged. Why: XLA CPU lowers a convolution whose weights are vmapped over seeds to a grouped
    convolution, many times slower per seed (rlzoo's `PatchConv` exists for the same reason); on a GPU it does
    not matter. The benchmark README reports the peer's speed with and without this.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    class MatmulConv(nn.Module):
        features: int
        kernel_size: tuple = (3, 3)
        strides: int = 1
        padding: str = "VALID"
        kernel_init: object = nn.initializers.lecun_normal()

        @nn.compact
        def __call__(self, x):
            assert tuple(self.kernel_size) == (3, 3) and self.strides in (1, (1, 1)) and self.padding == "VALID"
            kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            h, w = x.shape[-3] - 2, x.shape[-2] - 2
            shifted = [x[..., i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
            return jnp.concatenate(shifted, axis=-1) @ kernel.reshape(-1, self.features) + bias

    return MatmulConv


def convolutions_as_matmuls() -> None:
    """flax's `nn.Conv` replaced by `matmul_conv()` for every module defined after this call."""
    import flax.linen as nn

    nn.Conv = matmul_conv()


def load_purejaxql(checkout: str):
    """(pqn_minatar module, the MinAtar YAML as a dict) from a purejaxql checkout."""
    import yaml

    root = os.path.abspath(checkout)
    script = os.path.join(root, "purejaxql", "pqn_minatar.py")
    if not os.path.isfile(script):
        sys.exit(f"no purejaxql/pqn_minatar.py under {checkout}")
    sys.path.insert(0, root)
    placeholder_modules()
    module = importlib.import_module("purejaxql.pqn_minatar")
    with open(os.path.join(root, "purejaxql", "config", "alg", "pqn_minatar.yaml")) as f:
        return module, yaml.safe_load(f)


def greedy_returns(greedy_action, env, env_params, key, episodes: int):
    """Mean return of the first episode of `episodes` parallel envs under `greedy_action(obs) -> actions`
    (gymnax 0.0.x API)."""
    import jax
    import jax.numpy as jnp

    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, episodes), env_params)

    def step(carry, step_key):
        obs, state, returns, finished = carry
        actions = greedy_action(obs)
        obs, state, reward, done, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, episodes), state, actions, env_params)
        returns = returns + jnp.where(finished, 0.0, reward)
        return (obs, state, returns, finished | done.astype(bool)), None

    init = (obs, state, jnp.zeros(episodes), jnp.zeros(episodes, bool))
    steps = jax.random.split(jax.random.fold_in(key, 1), env_params.max_steps_in_episode)
    (_, _, returns, _), _ = jax.lax.scan(step, init, steps)
    return returns.mean()


def compile_and_run(train, keys, tag: str):
    """(outputs, compile_s, run_s) of `jax.jit(jax.vmap(train))` over the seed keys, compile and run timed apart."""
    import jax

    start = time.perf_counter()
    program = jax.jit(jax.vmap(train)).lower(keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(program(keys))
    run_s = time.perf_counter() - start
    log(f"[{tag}] compile {compile_s:.1f} s, run {run_s:.1f} s")
    return out, compile_s, run_s


def minatar_parser(doc: str, checkout_flag: str) -> argparse.ArgumentParser:
    """The arguments every MinAtar peer script takes: its checkout, the game, the budget, the seeds, the scoring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(checkout_flag, required=True)
    parser.add_argument("--env-id", default="Breakout-MinAtar")
    parser.add_argument("--total-timesteps", type=int, default=2_000_000)
    parser.add_argument("--num-seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    return parser


def print_result(args, peer: str, script: str, scores, env_steps: int, compile_s: float, run_s: float,
                 final_training_return: float, config: dict, **extra) -> None:
    """The one JSON line on stdout that `rlzoo.benchmarks.bench.peer` reads."""
    import jax

    result = {"peer": peer, "script": script, "env_id": args.env_id, "num_seeds": args.num_seeds,
              "env_steps_per_seed": env_steps, "scores": scores.tolist(), "compile_s": round(compile_s, 2),
              "run_s": round(run_s, 2), "env_steps_per_s": env_steps * args.num_seeds / run_s,
              "final_training_return": final_training_return, **extra,
              "hyperparameters": {k: v for k, v in config.items() if k.isupper()},
              "jax": jax.__version__, "gymnax": importlib.metadata.version("gymnax"),
              "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = minatar_parser(__doc__, "--purejaxql-dir")
    parser.add_argument("--test-during-training", action="store_true")
    parser.add_argument("--conv-as-matmul", action="store_true",
                        help="run purejaxql's conv as an equivalent matmul (see convolutions_as_matmuls)")
    args = parser.parse_args()
    # The flag rlzoo sets on import (see peer_ppo.py): the same XLA configuration for both sides.
    if SCHED_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SCHED_FLAG}=false".strip()
    import gymnax
    import jax
    import numpy as np

    if args.conv_as_matmul:
        convolutions_as_matmuls()
    module, alg = load_purejaxql(args.purejaxql_dir)
    config = {**alg, "ENV_NAME": args.env_id, "TOTAL_TIMESTEPS": args.total_timesteps,
              "TOTAL_TIMESTEPS_DECAY": args.total_timesteps, "TEST_DURING_TRAINING": args.test_during_training,
              "WANDB_MODE": "disabled", "NUM_SEEDS": args.num_seeds, "SEED": args.seed}
    train = module.make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)
    log(f"[peer_pqn] purejaxql PQN on {args.env_id}: jax {jax.__version__}, {args.num_seeds} seeds, "
        f"{args.total_timesteps} steps, test during training {args.test_during_training}")

    out, compile_s, run_s = compile_and_run(train, keys, "peer_pqn")

    env, env_params = gymnax.make(args.env_id)
    network = module.QNetwork(action_dim=env.action_space(env_params).n, norm_type=config["NORM_TYPE"],
                              norm_input=config.get("NORM_INPUT", False))
    state = out["runner_state"][0]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eval_keys = jax.random.split(jax.random.PRNGKey(12345), args.num_seeds)
    argmax_q = lambda v: lambda obs: jax.numpy.argmax(network.apply(v, obs, train=False), axis=-1)  # noqa: E731
    score = jax.jit(jax.vmap(lambda v, k: greedy_returns(argmax_q(v), env, env_params, k, args.eval_episodes)))
    scores = np.asarray(score(variables, eval_keys), np.float64)
    training = np.asarray(out["metrics"]["returned_episode_returns"])  # [seeds, updates], mean over the rollout
    env_steps = int(np.asarray(out["metrics"]["env_step"])[0, -1])
    print_result(args, "purejaxql", "purejaxql/pqn_minatar.py", scores, env_steps, compile_s, run_s,
                 float(training[:, -max(1, training.shape[1] // 20):].mean()), config,
                 test_during_training=args.test_during_training, conv_as_matmul=args.conv_as_matmul)


if __name__ == "__main__":
    main()
