"""Neural network building blocks (flax.linen) shared by the algorithm files.

Torsos map observations to features (`MLP`, `MinAtarCNN`, chosen by `make_torso`);
heads turn features into a policy distribution (distrax) or a value. Orthogonal
initialisation follows the PPO implementation details (Huang et al., 2022):
gain sqrt(2) in hidden layers, 0.01 on the policy head, 1.0 on the value head.

Not here: losses, optimisers, or anything algorithm-specific (those stay in the
algorithm's file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rlzoo.trainer import ConfigError

ACTIVATIONS: dict[str, Callable] = {"tanh": nn.tanh, "relu": nn.relu, "swish": nn.swish, "gelu": nn.gelu}


def orthogonal_dense(features: int, gain: float = float(np.sqrt(2)), name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.zeros, name=name)


class MLP(nn.Module):
    """Fully connected torso: Dense -> activation, for each hidden size."""

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for size in self.hidden_sizes:
            x = ACTIVATIONS[self.activation](orthogonal_dense(size)(x))
        return x


class PatchConv(nn.Module):
    """A 3x3 convolution written as one matmul over the nine shifted copies of the input (im2col).

    Same parameters (`kernel` [3, 3, C, features], `bias`) and outputs as
    `nn.Conv(features, (3, 3), padding=padding)` (tested). XLA CPU lowers a conv whose
    weights are vmapped (seeds x hyperparameters) to a grouped convolution, which was ~28x
    slower per seed than one seed in DQN on Breakout-MinAtar; as a matmul, vmap becomes a
    batched matmul (measured in tests/test_networks.py and the benchmarks README).
    """

    features: int
    padding: str = "VALID"
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.padding not in ("VALID", "SAME"):
            raise ConfigError(f"padding={self.padding!r} is not allowed; allowed: VALID, SAME")
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.padding == "SAME":
            x = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((1, 1), (1, 1), (0, 0)))
        height, width = x.shape[-3] - 2, x.shape[-2] - 2
        patches = jnp.concatenate([x[..., i:i + height, j:j + width, :] for i in range(3) for j in range(3)],
                                  axis=-1)  # [..., H', W', 9 C] in (row, column, channel) order, as the kernel
        return patches @ kernel.reshape(-1, self.features) + bias


class MinAtarCNN(nn.Module):
    """The MinAtar torso (Young & Tian, 2019): one 3x3 conv with 16 channels, then a dense layer.

    With `spatial`, it stops after the conv and returns the feature map [..., H-2, W-2, channels]
    (the encoder of SPR, whose transition model works on the map); the dense layer is then left out.
    """

    channels: int = 16
    hidden_size: int = 128
    activation: str = "relu"
    spatial: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        x = x.astype(jnp.float32)
        conv = PatchConv(self.channels, "VALID", nn.initializers.orthogonal(np.sqrt(2)), name="Conv_0")
        x = act(conv(x))
        if self.spatial:
            return x
        x = x.reshape(*x.shape[:-3], -1)
        return act(orthogonal_dense(self.hidden_size)(x))


def make_torso(obs_shape: tuple[int, ...], hidden_sizes: Sequence[int], activation: str) -> nn.Module:
    """A CNN for image-like (H, W, C) observations, else an MLP."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation={activation!r} is not allowed; allowed: {', '.join(ACTIVATIONS)}")
    if len(obs_shape) == 3:
        return MinAtarCNN(activation="relu" if activation == "tanh" else activation)
    return MLP(tuple(hidden_sizes), activation)


class ActorCritic(nn.Module):
    """Separate actor and critic torsos with a categorical or diagonal-Gaussian policy.

    Continuous actions use a state-independent log-std parameter (Schulman et al.,
    2017), initialised to 0. `__call__` returns (policy distribution, V(s)).
    """

    obs_shape: tuple[int, ...]
    num_actions: int
    discrete: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"

    def setup(self):
        self.actor_torso = make_torso(self.obs_shape, self.hidden_sizes, self.activation)
        self.critic_torso = make_torso(self.obs_shape, self.hidden_sizes, self.activation)
        self.policy_head = orthogonal_dense(self.num_actions, gain=0.01)
        self.value_head = orthogonal_dense(1, gain=1.0)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.num_actions,))

    def value(self, obs: jnp.ndarray) -> jnp.ndarray:
        return self.value_head(self.critic_torso(obs)).squeeze(-1)

    def policy(self, obs: jnp.ndarray) -> distrax.Distribution:
        out = self.policy_head(self.actor_torso(obs))
        if self.discrete:
            return distrax.Categorical(logits=out)
        return distrax.MultivariateNormalDiag(out, jnp.exp(jnp.broadcast_to(self.log_std, out.shape)))

    def __call__(self, obs: jnp.ndarray) -> tuple[distrax.Distribution, jnp.ndarray]:
        return self.policy(obs), self.value(obs)


class QNetwork(nn.Module):
    """Action values: [..., num_actions] (num_atoms == 1) or logits [..., num_actions, num_atoms].

    With `dueling`, Q = V + A - mean_a A (Wang et al., 2016, eq. 9), applied to
    logits for distributional heads as in Rainbow (Hessel et al., 2018).
    """

    obs_shape: tuple[int, ...]
    num_actions: int
    num_atoms: int = 1
    dueling: bool = False
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        features = make_torso(self.obs_shape, self.hidden_sizes, self.activation)(obs)
        shape = (self.num_actions, self.num_atoms) if self.num_atoms > 1 else (self.num_actions,)
        advantage = orthogonal_dense(int(np.prod(shape)), gain=1.0)(features).reshape(*features.shape[:-1], *shape)
        if not self.dueling:
            return advantage
        value_shape = (1, self.num_atoms) if self.num_atoms > 1 else (1,)
        value = orthogonal_dense(int(np.prod(value_shape)), gain=1.0)(features).reshape(
            *features.shape[:-1], *value_shape)
        action_axis = -2 if self.num_atoms > 1 else -1
        return value + advantage - advantage.mean(axis=action_axis, keepdims=True)
