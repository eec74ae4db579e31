"""Facts about the shared networks: output shapes, policy types and orthogonal initialisation."""

import distrax
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlzoo.trainer import ConfigError
from rlzoo.networks import ActorCritic, MinAtarCNN, MLP, NatureCNN, PatchConv, make_torso


def test_discrete_actor_critic_gives_a_categorical_policy_and_a_value_per_observation():
    net = ActorCritic((4,), 2, discrete=True)
    obs = jnp.ones((5, 4))
    params = net.init(jax.random.PRNGKey(0), obs)
    dist, value = net.apply(params, obs)
    assert isinstance(dist, distrax.Categorical) and dist.logits.shape == (5, 2) and value.shape == (5,)
    # The policy head starts near uniform (gain 0.01).
    np.testing.assert_allclose(dist.probs, 0.5, atol=0.02)


def test_continuous_actor_critic_has_a_state_independent_log_std():
    net = ActorCritic((3,), 2, discrete=False)
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    params = net.init(jax.random.PRNGKey(0), obs)
    dist, value = net.apply(params, obs)
    assert isinstance(dist, distrax.MultivariateNormalDiag) and dist.event_shape == (2,) and value.shape == (6,)
    std = np.asarray(dist.stddev())
    np.testing.assert_allclose(std, 1.0)  # log-std starts at 0, the same for every state
    assert params["params"]["log_std"].shape == (2,)


def test_minatar_observations_get_the_cnn_torso():
    assert isinstance(make_torso((10, 10, 4), (64, 64), "tanh"), MinAtarCNN)
    assert isinstance(make_torso((4,), (64, 64), "tanh"), MLP)
    net = ActorCritic((10, 10, 4), 3, discrete=True)
    obs = jnp.zeros((2, 10, 10, 4), dtype=jnp.bool_)
    dist, value = net.apply(net.init(jax.random.PRNGKey(0), obs), obs)
    assert dist.logits.shape == (2, 3) and value.shape == (2,)


def test_hidden_layers_are_orthogonal_with_gain_sqrt2():
    params = MLP((64, 64)).init(jax.random.PRNGKey(0), jnp.ones((1, 64)))
    kernel = np.asarray(params["params"]["Dense_1"]["kernel"])
    np.testing.assert_allclose(kernel.T @ kernel, 2.0 * np.eye(64), atol=1e-4)
    assert not np.asarray(params["params"]["Dense_1"]["bias"]).any()


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ConfigError, match="activation='sigmoid'"):
        make_torso((4,), (8,), "sigmoid")


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_patch_convolution_equals_flax_conv_with_the_same_parameters(padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8, 8, 5))  # two batch axes
    conv = flax.linen.Conv(7, (3, 3), padding=padding)
    params = conv.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(PatchConv(7, padding).apply(params, x), conv.apply(params, x), atol=1e-5)
    assert jax.tree.map(jnp.shape, PatchConv(7, padding).init(jax.random.PRNGKey(1), x)) == \
        jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize("size,stride,features", [(8, 4, 32), (4, 2, 64), (3, 1, 64)])  # the Nature CNN's layers
def test_strided_patch_convolution_equals_flax_conv(size, stride, features):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 21, 22, 4))
    conv = flax.linen.Conv(features, (size, size), (stride, stride), padding="VALID")
    params = conv.init(jax.random.PRNGKey(1), x)
    ours = PatchConv(features, "VALID", kernel_size=size, stride=stride)
    np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x), atol=1e-4)


def test_atari_frames_get_the_nature_cnn_and_minatar_grids_keep_theirs():
    frames = jnp.zeros((2, 84, 84, 4), jnp.uint8)
    torso = make_torso((84, 84, 4), (64,), "tanh")
    params = torso.init(jax.random.PRNGKey(0), frames)
    assert isinstance(torso, NatureCNN)
    assert [params["params"][f"PatchConv_{i}"]["kernel"].shape for i in range(3)] == \
        [(8, 8, 4, 32), (4, 4, 32, 64), (3, 3, 64, 64)]
    assert torso.apply(params, frames).shape == (2, 512)
    assert isinstance(make_torso((10, 10, 4), (64,), "relu"), MinAtarCNN)


def test_patch_convolution_refuses_other_paddings():
    with pytest.raises(ConfigError, match="padding"):
        PatchConv(4, "CIRCULAR").init(jax.random.PRNGKey(0), jnp.ones((1, 5, 5, 2)))
    with pytest.raises(ConfigError, match="stride=2"):
        PatchConv(4, "SAME", stride=2).init(jax.random.PRNGKey(0), jnp.ones((1, 5, 5, 2)))


def test_minatar_cnn_keeps_the_parameter_names_of_flax_conv():
    params = MinAtarCNN().init(jax.random.PRNGKey(0), jnp.ones((1, 10, 10, 4)))
    assert params["params"]["Conv_0"]["kernel"].shape == (3, 3, 4, 16)


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (-2.0, 2.0), (0.0, 3.0)])
def test_squashed_gaussian_log_density_is_the_change_of_variables_by_hand(low, high):
    """a = c + h tanh(u): log pi(a) = log N(u; mu, sigma) - sum_i log(h (1 - tanh(u_i)^2)), written out in NumPy."""
    from rlzoo.networks import squashed_gaussian

    mean, log_std = np.array([[0.3, -1.0], [1.2, 0.1]]), np.array([[-0.5, 0.2], [0.0, -1.0]])
    policy = squashed_gaussian(jnp.asarray(mean), jnp.asarray(log_std), low, high)
    action, log_prob = policy.sample_and_log_prob(seed=jax.random.PRNGKey(0), sample_shape=(5,))
    assert action.shape == (5, 2, 2) and (action >= low).all() and (action <= high).all()
    centre, half = (high + low) / 2, (high - low) / 2
    u = np.arctanh((np.asarray(action, np.float64) - centre) / half)
    std = np.exp(log_std)
    gaussian = (-0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    reference = gaussian - np.log(half * (1.0 - np.tanh(u) ** 2)).sum(-1)
    np.testing.assert_allclose(log_prob, reference, rtol=1e-4, atol=1e-4)


def test_a_board_observation_is_flattened_before_the_mlp_torso():
    """(H, W) observations (jumanji's 2048 board) go through the MLP as H*W features, batch axes kept: the same
    numbers as the MLP on the reshaped batch with the same parameters."""
    torso = make_torso((4, 4), (8,), "tanh")
    boards = jax.random.randint(jax.random.PRNGKey(0), (2, 3, 4, 4), 0, 12)
    params = torso.init(jax.random.PRNGKey(1), boards)
    features = torso.apply(params, boards)
    assert features.shape == (2, 3, 8)
    flat = MLP((8,), "tanh").apply({"params": params["params"]["torso"]}, boards.reshape(2, 3, 16))
    np.testing.assert_array_equal(np.asarray(features), np.asarray(flat))
