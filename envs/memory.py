"""POPGym memory tasks (Morad et al., ICLR 2023) in JAX with the gymnax 1.x API.

Card tasks deal a shuffled deck (52 cards per deck, 13 ranks x 4 suits), one card
a step, and reward each answer with +1/n or -1/n, where n is the number of answered
steps, so an episode's return lies in [-1, 1] and the perfect agent gets exactly 1:

* RepeatPrevious: see a suit (one-hot of 4) each step; answer the suit seen k steps
  ago (steps t < k are not scored). Easy/Medium/Hard: k = 4/32/64 with 1/2/3 decks.
* RepeatFirst: answer the suit of the first card, every step. Easy/Medium/Hard: 1/8/16 decks.
* CountRecall: see the dealt card's rank and a query rank (two one-hots of 13, the
  query is the rank of a card dealt so far, drawn uniformly); answer how many cards
  of the query rank have been dealt, the current one included (actions
  0..4*decks). Easy/Medium/Hard: 1/2/4 decks.
* Autoencode: watch the deck's suits (flag 0), then with the flag at 1 and a blank
  card, answer them in reverse order. Easy/Medium/Hard: 1/2/3 decks.

Control tasks hide velocities (and optionally add Gaussian noise to what is shown):

* StatelessCartPole: gymnax CartPole showing (x, θ) only, reward 1/max_steps per
  step (return in [0, 1]); Easy/Medium/Hard episodes last at most 200/400/600 steps.
  NoisyStatelessCartPole adds noise of std 0.1/0.2/0.3.
* StatelessPendulum: gymnax Pendulum showing (cos θ, sin θ); reward divided by
  16.2736 * max_steps (return in [-1, 0]); Easy/Medium/Hard episodes last
  200/150/100 steps. NoisyStatelessPendulum adds noise of std 0.1/0.2/0.3.

Simplifications, from POPGym as we know it: CountRecall's query is drawn from the
ranks dealt so far rather than POPGym's own query rule; Autoencode's play phase
shows a blank card; the levels' numbers are POPGym's as recalled, not re-checked
against its source. Episodes of the card tasks end by termination (their length is
fixed); the control tasks truncate at max_steps.

Every card task exposes `optimal_action(state)`, the answer it scores as correct,
so tests can check that the perfect agent gets the maximum return.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces
from gymnax.environments.classic_control.cartpole import CartPole
from gymnax.environments.classic_control.pendulum import Pendulum

NUM_SUITS, NUM_RANKS, CARDS_PER_DECK = 4, 13, 52
LEVELS = ("Easy", "Medium", "Hard")
PENDULUM_MAX_COST = 16.2736044  # π² + 0.1·8² + 0.001·2², the largest per-step cost


@struct.dataclass
class CardState(environment.EnvState):
    cards: jax.Array  # [n] suits (or ranks) of the shuffled deck, in dealing order
    queries: jax.Array  # [n] CountRecall: query rank per step; unused elsewhere
    time: jax.Array


@struct.dataclass
class CardParams(environment.EnvParams):
    max_steps_in_episode: int = 10_000  # set one past the fixed episode length: card episodes terminate


class CardTask(environment.Environment[CardState, CardParams]):
    """Shared dealing, scoring and spaces of the card tasks; subclasses say what to show and answer."""

    values_per_card = NUM_SUITS  # suits (4) or ranks (13)

    def __init__(self, num_decks: int):
        super().__init__()
        self.num_decks = num_decks
        self.num_cards = CARDS_PER_DECK * num_decks

    # Subclass hooks -----------------------------------------------------------------
    episode_length = property(lambda self: self.num_cards)

    def scored(self, time: jax.Array) -> jax.Array:
        """Whether the answer given at step `time` is scored."""
        return jnp.ones((), jnp.bool_)

    @property
    def num_scored(self) -> int:
        return self.episode_length

    def optimal_action(self, state: CardState) -> jax.Array:
        raise NotImplementedError

    def get_obs(self, state: CardState, params=None, key=None) -> jax.Array:
        raise NotImplementedError

    # gymnax API ---------------------------------------------------------------------
    @property
    def default_params(self) -> CardParams:
        return CardParams(max_steps_in_episode=self.episode_length + 1)

    def deal(self, key: jax.Array) -> jax.Array:
        deck = jnp.arange(self.num_cards) % self.values_per_card
        return jax.random.permutation(key, deck)

    def reset_env(self, key, params) -> tuple[jax.Array, CardState]:
        deal_key, query_key = jax.random.split(key)
        cards = self.deal(deal_key)
        # A uniformly drawn earlier-or-current step per step (used by CountRecall).
        steps = jnp.arange(self.num_cards)
        drawn = jnp.floor(jax.random.uniform(query_key, (self.num_cards,)) * (steps + 1)).astype(jnp.int32)
        state = CardState(cards=cards, queries=cards[drawn], time=jnp.zeros((), jnp.int32))
        return self.get_obs(state), state

    def step_env(self, key, state, action, params) -> tuple[jax.Array, CardState, jax.Array, jax.Array, dict[Any, Any]]:
        correct = action == self.optimal_action(state)
        reward = jnp.where(self.scored(state.time), jnp.where(correct, 1.0, -1.0) / self.num_scored, 0.0)
        state = state.replace(time=state.time + 1)
        terminated = self.is_terminated(state, params)
        return self.get_obs(state), state, reward, terminated, {"discount": 1.0 - terminated}

    def is_terminated(self, state, params) -> jax.Array:
        return state.time >= self.episode_length

    def card(self, state: CardState, index: jax.Array) -> jax.Array:
        return state.cards[jnp.clip(index, 0, self.num_cards - 1)]

    @property
    def num_actions(self) -> int:
        return NUM_SUITS

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(0.0, 1.0, self.get_obs(self.reset_env(jax.random.PRNGKey(0), params)[1]).shape, jnp.float32)


class RepeatPrevious(CardTask):
    """Answer the suit of the card dealt k steps ago."""

    def __init__(self, num_decks: int = 1, k: int = 4):
        super().__init__(num_decks)
        self.k = k

    def scored(self, time):
        return time >= self.k

    @property
    def num_scored(self) -> int:
        return self.num_cards - self.k

    def optimal_action(self, state):
        return self.card(state, state.time - self.k)

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(self.card(state, state.time), NUM_SUITS)


class RepeatFirst(CardTask):
    """Answer the suit of the first card dealt."""

    def optimal_action(self, state):
        return state.cards[0]

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(self.card(state, state.time), NUM_SUITS)


class CountRecall(CardTask):
    """Answer how many cards of the query rank have been dealt so far."""

    values_per_card = NUM_RANKS

    @property
    def num_actions(self) -> int:
        return 4 * self.num_decks + 1

    def optimal_action(self, state):
        query = state.queries[jnp.clip(state.time, 0, self.num_cards - 1)]
        dealt = jnp.arange(self.num_cards) <= state.time
        return jnp.sum(dealt & (state.cards == query))

    def get_obs(self, state, params=None, key=None):
        t = jnp.clip(state.time, 0, self.num_cards - 1)
        return jnp.concatenate([jax.nn.one_hot(state.cards[t], NUM_RANKS), jax.nn.one_hot(state.queries[t], NUM_RANKS)])


class Autoencode(CardTask):
    """Watch the deck, then answer its suits in reverse order."""

    episode_length = property(lambda self: 2 * self.num_cards)

    def scored(self, time):
        return time >= self.num_cards

    @property
    def num_scored(self) -> int:
        return self.num_cards

    def optimal_action(self, state):
        return self.card(state, 2 * self.num_cards - 1 - state.time)

    def get_obs(self, state, params=None, key=None):
        playing = state.time >= self.num_cards
        card = jnp.where(playing, 0.0, jax.nn.one_hot(self.card(state, state.time), NUM_SUITS))
        return jnp.concatenate([card, playing[None].astype(jnp.float32)])


# --------------------------------------------------------------------------- control without velocities


class Stateless(environment.Environment):
    """A gymnax control task that shows only some observation entries, with optional noise and reward scaling."""

    def __init__(self, inner: environment.Environment, shown: tuple[int, ...], max_steps: int,
                 reward_scale: float, noise_std: float = 0.0, name: str = "Stateless"):
        super().__init__()
        self.inner, self.shown, self.max_steps = inner, shown, max_steps
        self.reward_scale, self.noise_std, self._name = reward_scale, noise_std, name

    @property
    def default_params(self) -> Any:
        return self.inner.default_params.replace(max_steps_in_episode=self.max_steps)

    def observe(self, key: jax.Array, full_obs: jax.Array) -> jax.Array:
        obs = full_obs[jnp.asarray(self.shown)]
        return obs + self.noise_std * jax.random.normal(key, obs.shape) if self.noise_std else obs

    def reset_env(self, key, params):
        reset_key, noise_key = jax.random.split(key)
        obs, state = self.inner.reset_env(reset_key, params)
        return self.observe(noise_key, obs), state

    def step_env(self, key, state, action, params):
        step_key, noise_key = jax.random.split(key)
        obs, state, reward, terminated, info = self.inner.step_env(step_key, state, action, params)
        return self.observe(noise_key, obs), state, reward * self.reward_scale, terminated, info

    def is_terminated(self, state, params):
        return self.inner.is_terminated(state, params)

    @property
    def name(self) -> str:
        return self._name

    @property
    def num_actions(self) -> int:
        return self.inner.num_actions

    def action_space(self, params=None):
        return self.inner.action_space(params)

    def observation_space(self, params) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (len(self.shown),), jnp.float32)


def stateless_cartpole(level: int, noisy: bool = False) -> Stateless:
    max_steps = (200, 400, 600)[level]
    return Stateless(CartPole(), (0, 2), max_steps, 1.0 / max_steps, (0.1, 0.2, 0.3)[level] if noisy else 0.0,
                     f"{'Noisy' if noisy else ''}StatelessCartPole-{LEVELS[level]}")


def stateless_pendulum(level: int, noisy: bool = False) -> Stateless:
    max_steps = (200, 150, 100)[level]
    return Stateless(Pendulum(), (0, 1), max_steps, 1.0 / (PENDULUM_MAX_COST * max_steps),
                     (0.1, 0.2, 0.3)[level] if noisy else 0.0,
                     f"{'Noisy' if noisy else ''}StatelessPendulum-{LEVELS[level]}")


def registry() -> dict[str, Any]:
    """Env id -> zero-argument factory, for every task and level above."""
    cards = {
        "RepeatPrevious": [lambda: RepeatPrevious(1, 4), lambda: RepeatPrevious(2, 32), lambda: RepeatPrevious(3, 64)],
        "RepeatFirst": [lambda: RepeatFirst(1), lambda: RepeatFirst(8), lambda: RepeatFirst(16)],
        "CountRecall": [lambda: CountRecall(1), lambda: CountRecall(2), lambda: CountRecall(4)],
        "Autoencode": [lambda: Autoencode(1), lambda: Autoencode(2), lambda: Autoencode(3)],
    }
    out = {f"{task}-{LEVELS[i]}": make for task, makes in cards.items() for i, make in enumerate(makes)}
    for i, level in enumerate(LEVELS):
        out[f"StatelessCartPole-{level}"] = lambda i=i: stateless_cartpole(i)
        out[f"NoisyStatelessCartPole-{level}"] = lambda i=i: stateless_cartpole(i, noisy=True)
        out[f"StatelessPendulum-{level}"] = lambda i=i: stateless_pendulum(i)
        out[f"NoisyStatelessPendulum-{level}"] = lambda i=i: stateless_pendulum(i, noisy=True)
    return out
