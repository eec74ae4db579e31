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

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlzoo.trainer import ConfigError

ACTIVATIONS: dict[str, Callable] = {"tanh": nn.tanh, "relu": nn.relu, "swish": nn.swish, "gelu": nn.gelu}
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # the log-std range of the offline Gaussian policies (IQL, CSVE, CQL)


def orthogonal_dense(features: int, gain: float = float(np.sqrt(2)), name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.zeros, name=name)


NORMS = ("none", "layer", "batch")
"""Normalisation after each hidden layer, before its activation (PQN's choice: Gallici et al., 2025)."""


def normalization(norm: str, train: bool) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """LayerNorm, BatchNorm (this batch's statistics when `train`, else the running averages), or nothing."""
    if norm == "layer":
        return nn.LayerNorm()
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train)
    if norm == "none":
        return lambda x: x
    raise ConfigError(f"norm={norm!r} is not allowed; allowed: {', '.join(NORMS)}")


class MLP(nn.Module):
    """Fully connected torso: Dense -> normalisation (`norm`, none by default) -> activation, per hidden size."""

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    norm: str = "none"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.astype(jnp.float32)  # float64 observations under JAX_ENABLE_X64 would turn BatchNorm's statistics float64
        for size in self.hidden_sizes:
            x = ACTIVATIONS[self.activation](normalization(self.norm, train)(orthogonal_dense(size)(x)))
        return x


class PatchConv(nn.Module):
    """A k x k convolution (stride s) written as one matmul over the k*k shifted copies of the input (im2col).

    Same parameters (`kernel` [k, k, C, features], `bias`) and outputs as
    `nn.Conv(features, (k, k), (s, s), padding=padding)` (tested). XLA CPU lowers a conv whose
    weights are vmapped (seeds x hyperparameters) to a grouped convolution, which was ~28x
    slower per seed than one seed in DQN on Breakout-MinAtar; as a matmul, vmap becomes a
    batched matmul (measured in tests/test_networks.py and the benchmarks README).
    """

    features: int
    padding: str = "VALID"
    kernel_init: Callable = nn.initializers.lecun_normal()
    kernel_size: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k, s = self.kernel_size, self.stride
        if self.padding not in ("VALID", "SAME") or (self.padding == "SAME" and (s != 1 or k % 2 == 0)):
            raise ConfigError(f"padding={self.padding!r} is not allowed with kernel_size={k}, stride={s}; allowed: "
                              f"VALID, or SAME with stride 1 and an odd kernel_size")
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.padding == "SAME":
            x = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
        height, width = (x.shape[-3] - k) // s + 1, (x.shape[-2] - k) // s + 1
        rows, cols = s * (height - 1) + 1, s * (width - 1) + 1
        patches = jnp.concatenate([x[..., i:i + rows:s, j:j + cols:s, :] for i in range(k) for j in range(k)],
                                  axis=-1)  # [..., H', W', k k C] in (row, column, channel) order, as the kernel
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
    norm: str = "none"
    """Normalisation after the conv and the dense layer (`normalization`)."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        x = x.astype(jnp.float32)
        conv = PatchConv(self.channels, "VALID", nn.initializers.orthogonal(np.sqrt(2)), name="Conv_0")
        x = act(normalization(self.norm, train)(conv(x)))
        if self.spatial:
            return x
        x = x.reshape(*x.shape[:-3], -1)
        return act(normalization(self.norm, train)(orthogonal_dense(self.hidden_size)(x)))


class NatureCNN(nn.Module):
    """The Atari torso of Mnih et al. (2015, "Human-level control through deep RL"): convolutions of 32 8x8
    filters (stride 4), 64 4x4 (stride 2) and 64 3x3 (stride 1), then a dense layer of 512. Integer (uint8)
    frames are scaled to [0, 1]. The convolutions are `PatchConv`s, which stay fast when vmapped."""

    hidden_size: int = 512
    activation: str = "relu"
    norm: str = "none"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        act = ACTIVATIONS[self.activation]
        x = x.astype(jnp.float32) / 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.float32)
        for features, size, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            conv = PatchConv(features, "VALID", nn.initializers.orthogonal(np.sqrt(2)), size, stride)
            x = act(normalization(self.norm, train)(conv(x)))
        x = x.reshape(*x.shape[:-3], -1)
        return act(normalization(self.norm, train)(orthogonal_dense(self.hidden_size)(x)))


NATURE_CNN_MIN_SIZE = 36  # the smallest height and width the Nature CNN's three VALID convolutions take


class Flattened(nn.Module):
    """`torso` on observations flattened from their `obs_ndim` trailing axes (leading batch axes kept)."""

    torso: nn.Module
    obs_ndim: int

    def __call__(self, x: jnp.ndarray, *args, **kwargs) -> jnp.ndarray:
        return self.torso(x.reshape(*x.shape[:x.ndim - self.obs_ndim], -1), *args, **kwargs)


def make_torso(obs_shape: tuple[int, ...], hidden_sizes: Sequence[int], activation: str,
               norm: str = "none") -> nn.Module:
    """A CNN for image-like (H, W, C) observations (the Nature CNN for frames of at least
    `NATURE_CNN_MIN_SIZE` pixels such as Atari's, the MinAtar one for smaller grids), else an MLP (on the
    flattened observation, for a board-like (H, W) one such as jumanji's 2048); `norm` after each hidden layer."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation={activation!r} is not allowed; allowed: {', '.join(ACTIVATIONS)}")
    if len(obs_shape) == 3 and min(obs_shape[:2]) >= NATURE_CNN_MIN_SIZE:
        return NatureCNN(activation="relu" if activation == "tanh" else activation, norm=norm)
    if len(obs_shape) == 3:
        return MinAtarCNN(activation="relu" if activation == "tanh" else activation, norm=norm)
    mlp = MLP(tuple(hidden_sizes), activation, norm)
    if len(obs_shape) == 1:
        return mlp
    return Flattened(mlp, len(obs_shape))


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


def masked_policy(dist: distrax.Distribution, mask: jnp.ndarray | None) -> distrax.Distribution:
    """A categorical policy restricted to the legal actions of `mask` (None: unchanged). Illegal logits become
    the lowest finite float, not -inf, so that entropy and log-probabilities of legal actions stay finite."""
    if mask is None:
        return dist
    return distrax.Categorical(logits=jnp.where(mask, dist.logits, jnp.finfo(dist.logits.dtype).min))


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
    norm: str = "none"
    """Normalisation in the torso (`normalization`); with "batch", `train` picks batch or running statistics."""

    @nn.compact
    def __call__(self, obs: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        features = make_torso(self.obs_shape, self.hidden_sizes, self.activation, self.norm)(obs, train)
        shape = (self.num_actions, self.num_atoms) if self.num_atoms > 1 else (self.num_actions,)
        advantage = orthogonal_dense(int(np.prod(shape)), gain=1.0)(features).reshape(*features.shape[:-1], *shape)
        if not self.dueling:
            return advantage
        value_shape = (1, self.num_atoms) if self.num_atoms > 1 else (1,)
        value = orthogonal_dense(int(np.prod(value_shape)), gain=1.0)(features).reshape(
            *features.shape[:-1], *value_shape)
        action_axis = -2 if self.num_atoms > 1 else -1
        return value + advantage - advantage.mean(axis=action_axis, keepdims=True)


# --------------------------------------------------------------------------- continuous-action actors and critics


class SquashedGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), diag sigma(s)^2)): returns (mu, log sigma), log sigma squashed into its range."""

    action_dim: int
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = MLP(self.hidden_sizes, self.activation)(obs)
        mean = orthogonal_dense(self.action_dim, gain=0.01)(features)
        raw_log_std = orthogonal_dense(self.action_dim, gain=0.01)(features)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(raw_log_std) + 1.0)
        return mean, log_std


class DeterministicActor(nn.Module):
    """mu(s) = tanh(f(s)) in [-1, 1] (TD3)."""

    action_dim: int
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return jnp.tanh(orthogonal_dense(self.action_dim, gain=0.01)(MLP(self.hidden_sizes, self.activation)(obs)))


class QCritic(nn.Module):
    """Q(s, a): an MLP on the concatenated observation and action."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        features = MLP(self.hidden_sizes, self.activation)(jnp.concatenate([obs, action], axis=-1))
        return orthogonal_dense(1, gain=1.0)(features).squeeze(-1)


TwinCritic = nn.vmap(QCritic, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0,
                     axis_size=2)
"""Two independently initialised critics with stacked parameters: Q(s, a) -> [2, ...]."""


def squashed_gaussian(mean: jax.Array, log_std: jax.Array, low: float = -1.0,
                      high: float = 1.0) -> distrax.Distribution:
    """a = c + h tanh(u), u ~ N(mean, diag exp(log_std)^2), c and h the centre and half-range of [low, high].

    Its log-prob includes the Jacobian of the squashing (SAC, appendix C):
    log pi(a|s) = log N(u) - sum_i log(h (1 - tanh(u_i)^2)). The one tanh-Gaussian of rlzoo (SAC, i-SAC, CQL).
    """
    squash = distrax.Tanh()
    if (low, high) != (-1.0, 1.0):
        squash = distrax.Chain([distrax.ScalarAffine((high + low) / 2, (high - low) / 2), squash])
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)), distrax.Block(squash, ndims=1))


# --------------------------------------------------------------------------- offline actors and critics (Dense init)


def dense_stack(x: jax.Array, hidden_sizes: Sequence[int], activation: str) -> jax.Array:
    """Dense -> activation for each hidden size, with flax's default (LeCun normal) init, inside the caller."""
    for size in hidden_sizes:
        x = ACTIVATIONS[activation](nn.Dense(size)(x))
    return x


class GaussianActor(nn.Module):
    """pi(a|s) = N(mu(s), diag(exp(log_std))), mu squashed into the action bounds by tanh.

    The log-std is a state-independent parameter clipped to [-5, 2], as in IQL's
    and CSVE's reference code.
    """

    action_dim: int
    action_low: float = -1.0
    action_high: float = 1.0
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> distrax.MultivariateNormalDiag:
        centre, half_range = (self.action_high + self.action_low) / 2, (self.action_high - self.action_low) / 2
        head = nn.Dense(self.action_dim)  # created before the hidden layers: it is Dense_0
        mean = centre + half_range * jnp.tanh(head(dense_stack(obs, self.hidden_sizes, self.activation)))
        log_std = jnp.clip(self.param("log_std", nn.initializers.zeros, (self.action_dim,)), LOG_STD_MIN, LOG_STD_MAX)
        return distrax.MultivariateNormalDiag(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape))


class StateValue(nn.Module):
    """V(s): an MLP with a scalar head."""

    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.Dense(1)(dense_stack(obs, self.hidden_sizes, self.activation)).squeeze(-1)


class _QValue(nn.Module):
    hidden_sizes: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        return nn.Dense(1)(dense_stack(x, self.hidden_sizes, self.activation)).squeeze(-1)


class EnsembleQ(nn.Module):
    """`num_critics` independent Q(s, a) networks in one module; returns [num_critics, ...]."""

    num_critics: int = 2
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        chex.assert_equal_shape_prefix((obs, action), obs.ndim - 1)
        critics = nn.vmap(_QValue, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                          out_axes=0, axis_size=self.num_critics)
        return critics(tuple(self.hidden_sizes), self.activation)(obs, action)


class BoundedDeterministicActor(nn.Module):
    """pi(s) = centre + half_range * tanh(MLP(s)): a deterministic policy inside the action bounds (TD3+BC)."""

    action_dim: int
    action_low: float = -1.0
    action_high: float = 1.0
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = dense_stack(obs, self.hidden_sizes, self.activation)
        centre, half_range = (self.action_high + self.action_low) / 2, (self.action_high - self.action_low) / 2
        return centre + half_range * jnp.tanh(nn.Dense(self.action_dim)(x))


class TanhGaussianActor(nn.Module):
    """CQL's policy (as SAC's): u ~ N(mu(s), sigma(s)^2), a = centre + half_range * tanh(u); log-std clipped to [-5, 2].

    Unlike `SquashedGaussianActor`, the layers keep flax's default init and the log-std is clipped, not
    squashed, as in CORL's reference code. Returns (mu, log sigma); `squashed_gaussian` makes the policy.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = dense_stack(obs, self.hidden_sizes, self.activation)
        mean = nn.Dense(self.action_dim)(x)
        log_std = jnp.clip(nn.Dense(self.action_dim)(x), LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std
