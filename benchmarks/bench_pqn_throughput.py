"""PQN against DQN: environment steps per second at equal env steps on Breakout-MinAtar, one process, 1 seed.

    .venv/bin/python benchmarks/bench_pqn_throughput.py

PQN with purejaxql's MinAtar settings (128 envs x 32 steps, 2 epochs x 32 minibatches); DQN with its defaults.
Each program is compiled, then run twice (best kept); PQN is timed before and after DQN, and the slower PQN
time is the one compared.
"""
import time, jax, json
from rlzoo.algorithms import dqn, pqn
from rlzoo.sweep import seed_keys
STEPS = 200_704  # a multiple of 128 * 32 and of DQN's 10 envs' update size
def timed(trainer, hp):
    keys = seed_keys(0, 1)
    t = time.perf_counter(); c = jax.jit(jax.vmap(trainer, in_axes=(0, None))).lower(keys, hp).compile(); compile_s = time.perf_counter() - t
    runs = []
    for _ in range(2):
        t = time.perf_counter(); out = jax.block_until_ready(c(keys, hp)); runs.append(time.perf_counter() - t)
    return compile_s, min(runs), float(out[1]["env_steps"][0, -1])
p = pqn.make_train(pqn.Config(env_id="Breakout-MinAtar", total_timesteps=STEPS, num_envs=128, num_steps=32, num_epochs=2, num_minibatches=32))
php = pqn.HParams(lr=5e-4, lam=0.65, eps_end=0.05, exploration_fraction=0.1, reward_scale=1.0)
d = dqn.make_train(dqn.Config(env_id="Breakout-MinAtar", total_timesteps=STEPS))
res = {}
for name, tr, hp in (("pqn", p, php), ("dqn", d, dqn.HParams()), ("pqn_again", p, php)):
    c, r, steps = timed(tr, hp); res[name] = dict(compile_s=c, run_s=r, env_steps=steps, steps_per_s=steps / r)
    print(name, json.dumps(res[name]), flush=True)
print("pqn/dqn steps/s:", min(res["pqn"]["steps_per_s"], res["pqn_again"]["steps_per_s"]) / res["dqn"]["steps_per_s"])
