"""`Trainer.shared_counters` and `run_members`: state leaves that every member shares are carried once.

A toy trainer (no env, no network: it compiles in well under a second) holds one leaf of each kind: a
counter every member shares, and integer scalars that a key, a hyperparameter, or a branch on a member's
own values makes differ. Only the first may be shared; the rest must stay per member, or the members'
results would silently be member 0's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.trainer import Trainer


class ToyHParams(NamedTuple):
    step_size: jax.Array
    stride: jax.Array


class ToyState(NamedTuple):
    weight: jax.Array  # float, per member
    updates: jax.Array  # int32: +1 per update, the same in every member
    strided: jax.Array  # int32: + stride, a hyperparameter
    seeded: jax.Array  # int32: drawn from the member's key
    branched: jax.Array  # int32: counts updates whose weight (per member) was positive


def toy_trainer(num_updates: int = 5) -> Trainer:
    def init(key: jax.Array, hp: ToyHParams) -> ToyState:
        zero = jnp.zeros((), jnp.int32)
        return ToyState(jax.random.normal(key), zero, zero, jax.random.randint(key, (), 0, 9), zero)

    def update(state: ToyState, hp: ToyHParams) -> tuple[ToyState, dict[str, jax.Array]]:
        weight = state.weight - hp.step_size * state.weight + 0.01 * state.updates
        branched = jax.lax.cond(weight > 0, lambda c: c + 1, lambda c: c, state.branched)
        state = ToyState(weight, state.updates + 1, state.strided + hp.stride.astype(jnp.int32),
                         state.seeded + 1, branched)
        return state, {"weight": weight, "updates": state.updates}

    return Trainer(init, update, num_updates, env_steps_per_update=1)


def members(num: int = 3) -> tuple[jax.Array, ToyHParams]:
    keys = jax.random.split(jax.random.PRNGKey(0), num)
    return keys, ToyHParams(jnp.linspace(0.1, 0.3, num), jnp.arange(1.0, num + 1.0))


def test_only_a_counter_that_no_key_hyperparameter_or_member_value_reaches_is_shared():
    keys, hparams = members()
    shared = toy_trainer().shared_counters(keys, hparams)
    assert shared == ToyState(weight=False, updates=True, strided=False, seeded=False, branched=False)


def test_running_members_with_shared_counters_gives_what_each_member_gives_alone():
    trainer = toy_trainer()
    keys, hparams = members()
    shared = trainer.shared_counters(keys, hparams)
    states, metrics = jax.jit(lambda k, h: trainer.run_members(trainer.init_members(k, h), h, 5, None, shared))(
        keys, hparams)
    for m in range(keys.shape[0]):
        alone_state, alone_metrics = trainer(keys[m], jax.tree.map(lambda x: x[m], hparams))
        for together, alone in zip(jax.tree.leaves((states, metrics)), jax.tree.leaves((alone_state, alone_metrics))):
            np.testing.assert_allclose(np.asarray(together)[m], np.asarray(alone), rtol=1e-6)
    assert states.updates.shape == (3,) and metrics["updates"].shape == (3, 5)  # broadcast back per member


def test_ppo_shares_its_update_index_and_optimizer_counts_and_nothing_else():
    from rlzoo.algorithms import ppo
    from rlzoo.sweep import expand_members, seed_keys

    trainer = ppo.make_train(ppo.Config(total_timesteps=256, num_envs=4, num_steps=32, hidden_sizes=(16, 16)))
    keys, hparams = expand_members(seed_keys(0, 2), jax.tree.map(lambda x: jnp.asarray(x)[None], ppo.HParams()))
    shared = trainer.shared_counters(keys, hparams)
    names = [jax.tree_util.keystr(path) for path, is_shared in jax.tree_util.tree_leaves_with_path(shared) if is_shared]
    assert names == [".opt_state[1][0].count", ".opt_state[1][1].count", ".update_index"]
