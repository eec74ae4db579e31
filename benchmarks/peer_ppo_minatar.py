"""Train PureJaxRL's PPO on a MinAtar game, with rlzoo's MinAtar network, and score it as rlzoo's benchmarks
score ours.

Run with the PEER venv (gymnax 0.0.x), from a PureJaxRL checkout outside this repository:

    .venv-peer/bin/python benchmarks/peer_ppo_minatar.py --purejaxrl-dir /tmp/purejaxrl \\
        --env-id Breakout-MinAtar --total-timesteps 2000000 --num-seeds 5 > ppo_peer.json

`--purejaxrl-dir` is a checkout of github.com/luchris429/purejaxrl (the repo root or its inner
`purejaxrl/` folder); its `ppo.py` `make_train` is imported and run unchanged (rollout, GAE, clipped
surrogate and value losses, minibatching, Adam with eps 1e-5 and global-norm clipping, the learning rate
annealed per minibatch step) with the hyperparameters of rlzoo's `bench.PPO_MINATAR` (purejaxql's
`config/alg/ppo_minatar.yaml`), given as flags by the benchmark. One thing is swapped: PureJaxRL's
`ActorCritic` is a 64-64 MLP on the flattened observation; here it is rlzoo's MinAtar actor-critic (separate
actor and critic torsos, each a 3x3 conv with 16 channels, ReLU, a dense layer of 128, ReLU; orthogonal
initialisation, heads with gains 0.01 and 1), so that both sides train the same architecture and the pair
compares the algorithms' code. The conv is written as a matmul (`peer_pqn.matmul_conv`) for XLA CPU's sake.

All seeds are one `jax.jit(jax.vmap(train))` program, keys `jax.random.split(PRNGKey(seed), num_seeds)`;
compile and run are timed apart. The score of a seed, as in rlzoo's benchmarks: the mean return of
`--eval-episodes` greedy episodes (the policy's mode) of the final network. Exactly one JSON line goes to
stdout. Known protocol difference: PureJaxRL treats a time-limit truncation as a termination (no bootstrap),
and gymnax's MinAtar games cut episodes at 1,000 steps, which a policy that keeps the ball in play reaches;
ours bootstraps from the true final observation there.
"""

from __future__ import annotations

import os

from peer_ppo import SCHED_FLAG, load_purejaxrl, log
from peer_pqn import compile_and_run, greedy_returns, matmul_conv, minatar_parser, print_result


def minatar_actor_critic(obs_shape: tuple[int, ...]):
    """A drop-in for PureJaxRL's `ActorCritic(action_dim, activation)` taking flattened MinAtar observations."""
    import distrax
    import flax.linen as nn
    import jax.numpy as jnp
    import numpy as np
    from flax.linen.initializers import constant, orthogonal

    conv = matmul_conv()

    def dense(features: int, gain: float) -> nn.Dense:
        return nn.Dense(features, kernel_init=orthogonal(gain), bias_init=constant(0.0))

    class MinAtarActorCritic(nn.Module):
        action_dim: int
        activation: str = "relu"

        def torso(self, x):
            x = nn.relu(conv(16, kernel_init=orthogonal(np.sqrt(2)))(x.reshape(*x.shape[:-1], *obs_shape)))
            return nn.relu(dense(128, np.sqrt(2))(x.reshape(*x.shape[:-3], -1)))

        @nn.compact
        def __call__(self, x):
            logits = dense(self.action_dim, 0.01)(self.torso(x))
            value = dense(1, 1.0)(self.torso(x))
            return distrax.Categorical(logits=logits), jnp.squeeze(value, axis=-1)

    return MinAtarActorCritic


def main() -> None:
    parser = minatar_parser(__doc__, "--purejaxrl-dir")
    for name, default in (("num-envs", 64), ("num-steps", 128), ("num-epochs", 4), ("num-minibatches", 8)):
        parser.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("lr", 5e-3), ("gamma", 0.99), ("gae-lambda", 0.95), ("clip-eps", 0.2),
                          ("ent-coef", 1e-4), ("vf-coef", 0.5), ("max-grad-norm", 0.5)):
        parser.add_argument(f"--{name}", type=float, default=default)
    args = parser.parse_args()
    # The flag rlzoo sets on import (see peer_ppo.py): the same XLA configuration for both sides.
    if SCHED_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SCHED_FLAG}=false".strip()
    import gymnax
    import jax
    import numpy as np

    ppo = load_purejaxrl(args.purejaxrl_dir)
    env, env_params = gymnax.make(args.env_id)
    ppo.ActorCritic = minatar_actor_critic(env.observation_space(env_params).shape)
    config = {"LR": args.lr, "NUM_ENVS": args.num_envs, "NUM_STEPS": args.num_steps,
              "TOTAL_TIMESTEPS": args.total_timesteps, "UPDATE_EPOCHS": args.num_epochs,
              "NUM_MINIBATCHES": args.num_minibatches, "GAMMA": args.gamma, "GAE_LAMBDA": args.gae_lambda,
              "CLIP_EPS": args.clip_eps, "ENT_COEF": args.ent_coef, "VF_COEF": args.vf_coef,
              "MAX_GRAD_NORM": args.max_grad_norm, "ACTIVATION": "relu", "ENV_NAME": args.env_id,
              "ANNEAL_LR": True, "DEBUG": False}
    train = ppo.make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.num_seeds)
    log(f"[peer_ppo_minatar] PureJaxRL PPO on {args.env_id}: jax {jax.__version__}, {args.num_seeds} seeds, "
        f"{args.total_timesteps} steps")
    out, compile_s, run_s = compile_and_run(train, keys, "peer_ppo_minatar")
    network = ppo.ActorCritic(env.action_space(env_params).n, activation="relu")
    params = out["runner_state"][0].params
    mode = lambda p: lambda obs: network.apply(p, obs.reshape(*obs.shape[:1], -1))[0].mode()  # noqa: E731
    eval_keys = jax.random.split(jax.random.PRNGKey(12345), args.num_seeds)
    score = jax.jit(jax.vmap(lambda p, k: greedy_returns(mode(p), env, env_params, k, args.eval_episodes)))
    scores = np.asarray(score(params, eval_keys), np.float64)
    num_updates = config["NUM_UPDATES"]
    env_steps = num_updates * args.num_envs * args.num_steps
    training = np.asarray(out["metrics"]["returned_episode_returns"])  # [seeds, updates, steps, envs]
    print_result(args, "purejaxrl", "purejaxrl/ppo.py", scores, env_steps, compile_s, run_s,
                 float(training[:, -max(1, num_updates // 20):].mean()), config,
                 network="rlzoo's MinAtar actor-critic (see the module docstring)")


if __name__ == "__main__":
    main()
