"""Flow matching: time embedding numerics, the Euler sampler on a closed-form flow, the loss,
the action/state projections (shapes, full-size counts) and their errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models.action import (
    ActionConfig,
    ActionInputs,
    euler_sample,
    flow_matching_loss,
    noisy_actions,
    sample_flow_time,
    sinusoidal_time_embedding,
)
from f1_jax.models.precision import get_precision
from tolerances import EPS32, assert_close


def _float64_time_embedding(t, dim, min_period=4e-3, max_period=4.0):
    """The original's formula: float64 frequencies and arguments."""
    fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float64)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * np.pi / period)[None] * np.asarray(t, np.float32).astype(np.float64)[:, None]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)


def test_time_embedding_matches_float64_original():
    t = np.concatenate(
        [np.random.RandomState(0).rand(256), np.float32(1.0) + np.arange(10) * np.float32(-0.1)]
    ).astype(np.float32)
    got = np.asarray(
        jax.jit(sinusoidal_time_embedding, static_argnums=(1, 2, 3))(
            jnp.asarray(t), 1024, 4e-3, 4.0
        )
    )
    want = _float64_time_embedding(t, 1024)
    # Naive fp32 is ~1.7e-4 off here (angles reach 1.6e3 rad); the compensated form is ~1e-6.
    # Explicit, elementwise (no reduction): values <= 1 against float64; the exact turns' fraction
    # rounds once (<= pi eps32 rad), then 2 pi x and sin/cos round: a few eps32; 2e-6 ~ 16 eps32.
    assert np.abs(got - want).max() < 16 * EPS32


def test_euler_sampler_follows_a_closed_form_flow():
    """For a point target a, the flow-matching velocity is v(x, t) = (x - a) / t and the exact flow
    x_t = a + t (x_1 - a) is linear in t, so every Euler step lands on it: x_0 = a."""
    target = jnp.asarray(np.random.RandomState(1).normal(size=(3, 5, 7)), jnp.float32)
    noise = jnp.asarray(np.random.RandomState(2).normal(size=(3, 5, 7)), jnp.float32)
    noise_before = np.asarray(noise).copy()
    seen = []

    def velocity(x, t):
        jax.debug.callback(lambda tt: seen.append(float(tt[0])), t)
        return (x - target) / t[:, None, None]

    out = jax.jit(lambda n: euler_sample(velocity, n, 10))(noise)
    # Ten steps of x + dt (x - a) / t and t + dt: 5 rounded ops each, at the magnitude of x and a.
    scale = max(np.abs(noise_before).max(), np.abs(np.asarray(target)).max())
    assert_close(out, target, terms=10 * 5, scale=scale)
    np.testing.assert_array_equal(noise, noise_before)  # inputs are not mutated
    # fp32 times accumulated as the original: 1.0, 0.9, 0.8000001, ...
    expected_t = [np.float32(1.0)]
    for _ in range(9):
        expected_t.append(np.float32(expected_t[-1] + np.float32(-0.1)))
    np.testing.assert_array_equal(np.float32(seen), np.float32(expected_t))


def test_euler_sampler_on_a_linear_field():
    """dx/dt = c x: ten Euler steps from t=1 to 0 multiply x by (1 - 0.1 c)^10."""
    x1 = jnp.ones((2, 3, 4))
    out = euler_sample(lambda x, t: 0.5 * x, x1, 10)
    # Ten steps of x + dt (0.5 x) (0.5 x is exact): 2 rounded ops each, on values <= x1 = 1.
    assert_close(out, (1 - 0.05) ** 10 * np.ones((2, 3, 4)), terms=10 * 2, scale=1.0)


def test_flow_matching_loss_and_interpolation():
    rng = np.random.RandomState(3)
    actions, noise, velocity = (rng.normal(size=(2, 4, 6)).astype(np.float32) for _ in range(3))
    is_pad = np.array([[False, False, True, True], [False] * 4])
    got = flow_matching_loss(
        jnp.asarray(velocity), jnp.asarray(noise), jnp.asarray(actions), jnp.asarray(is_pad)
    )
    err = ((noise - actions) - velocity) ** 2 * (~is_pad)[..., None]
    # padded steps stay counted; a mean of 48 non-negative terms (4 rounded ops each before it).
    assert_close(got, err.sum() / err.size, terms=err.size + 4)
    t = jnp.asarray([0.25, 1.0])
    x_t = noisy_actions(jnp.asarray(actions), jnp.asarray(noise), t)
    # t n + (1 - t) a: two products and a sum, per element at the scale t |n| + (1 - t) |a|.
    assert_close(x_t[1], noise[1], terms=3, scale=np.abs(noise[1]))  # t = 1 is pure noise
    want, scale = (
        0.25 * noise[0] + 0.75 * actions[0],
        0.25 * np.abs(noise[0]) + 0.75 * np.abs(actions[0]),
    )
    assert_close(x_t[0], want, terms=3, scale=scale)


def test_flow_time_distribution():
    t = np.asarray(sample_flow_time(jax.random.key(0), 200_000))
    assert 0.001 <= t.min() and t.max() <= 1.0
    # 0.999 * Beta(1.5, 1) + 0.001 has mean 0.999 * 0.6 + 0.001.
    assert abs(t.mean() - (0.999 * 0.6 + 0.001)) < 3e-3
    np.testing.assert_array_equal(
        t[:10], np.asarray(sample_flow_time(jax.random.key(0), 200_000))[:10]
    )


def test_action_inputs_match_the_formula():
    config = ActionConfig(width=16, action_dim=6, state_dim=5, chunk_size=3)
    module = ActionInputs(config, get_precision("parity"))
    state, x_t, t = jnp.ones((2, 5)), jnp.ones((2, 3, 6)), jnp.asarray([0.3, 0.9])
    params = nn.unbox(module.init(jax.random.key(0), state, x_t, t))
    tokens = module.apply(params, state, x_t, t)
    assert tokens.shape == (2, 4, 16)
    p = jax.tree.map(np.asarray, params["params"])
    dense = lambda name, x: x @ p[name]["kernel"] + p[name]["bias"]
    emb = np.asarray(sinusoidal_time_embedding(t, 16, 4e-3, 4.0))
    fused = np.concatenate(
        [dense("action_in_proj", np.ones((2, 3, 6))), np.broadcast_to(emb[:, None], (2, 3, 16))], -1
    )
    h = dense("action_time_mlp_in", fused)
    want = dense("action_time_mlp_out", h / (1 + np.exp(-h)))
    # fp32 numpy reference; stages: action_in_proj (6 + bias), action_time_mlp_in (16 + 16 +
    # bias), swish (3 ops), action_time_mlp_out (16 + bias). The state token: state_proj (5 + 1).
    assert_close(tokens[:, 1:], want, terms=(6 + 1, 32 + 1, 3, 16 + 1))
    assert_close(tokens[:, 0], dense("state_proj", np.ones((2, 5))), terms=5 + 1)
    assert module.apply(params, tokens[:, 1:], method=ActionInputs.velocity).shape == (2, 3, 6)
    with pytest.raises(ValueError, match="zero-padded"):
        module.apply(params, jnp.ones((2, 7)), x_t, t)


def test_full_size_action_projection_count():
    module = ActionInputs(ActionConfig(width=1024), get_precision("default"))
    shapes = jax.eval_shape(
        module.init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 32), jnp.float32),
        jax.ShapeDtypeStruct((1, 50, 32), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.float32),
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
    assert count == 3_248_160  # action/state projections: 3.25 M
