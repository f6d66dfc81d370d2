"""The action expert's inputs and outputs, and flow matching (docs/model.md, "Actions").

Flow convention (pi0 / F1): t in (0, 1], t = 1 is pure noise, x_t = t * noise + (1 - t) * actions,
and the network predicts the velocity u_t = noise - actions. Sampling integrates from t = 1 to 0
with `num_steps` Euler steps of dt = -1 / num_steps.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from f1_common.model_config import ActionConfig
from f1_jax.models.precision import Precision


def _split_bits(values: np.ndarray, pieces: int) -> list[np.ndarray]:
    """Splits float64 values into `pieces` fp32 parts of at most 12 significant bits each."""
    parts, rest = [], values.astype(np.float64)
    for _ in range(pieces):
        exponent = np.floor(np.log2(np.abs(rest), where=rest != 0, out=np.zeros_like(rest)))
        quantum = np.exp2(exponent - 11)
        part = np.where(rest != 0, np.round(rest / quantum) * quantum, 0.0)
        parts.append(part.astype(np.float32))
        rest = rest - part
    return parts


def _high_bits(x: jax.Array) -> jax.Array:
    """The fp32 value with only the top 12 significant bits of x (exact, via the bit pattern)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0xFFFFF000)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def sinusoidal_time_embedding(
    t: jax.Array, dim: int, min_period: float, max_period: float
) -> jax.Array:
    """`[sin(2 pi t / period), cos(2 pi t / period)]` with periods geometric in [min, max].

    The original evaluates the angle in float64 (it reaches ~1.6e3 rad, where fp32 loses ~1e-4).
    Here the angle is kept in turns and computed error-free in fp32: t and 1/period are split into
    12-bit pieces whose pairwise products are exact, and each product's integer part (whole turns,
    which do not change sin/cos) is dropped before summing. The result matches float64 to ~1e-6.

    Args:
      t: [B] flow times.
    Returns:
      [B, dim] fp32.
    """
    if dim % 2:
        raise ValueError(f"The time embedding width must be even, got {dim}.")
    fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float64)
    period = min_period * (max_period / min_period) ** fraction
    freq_pieces = _split_bits(1.0 / period, 3)  # turns per unit time, ~36 significant bits

    t = t.astype(jnp.float32)[:, None]
    t_high = _high_bits(t)
    t_pieces = (t_high, t - t_high)  # both exact, 12 + 12 significant bits

    turns = jnp.zeros((t.shape[0], dim // 2), jnp.float32)
    for i, t_piece in enumerate(t_pieces):
        for j, f_piece in enumerate(freq_pieces):
            if i + j > 2:  # below fp32 resolution of the sum
                continue
            product = t_piece * jnp.asarray(f_piece)  # exact: <= 24 significant bits
            turns = turns + (product - jnp.round(product))
    turns = turns - jnp.round(turns)
    angle = 2 * np.float32(np.pi) * turns
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def _dense(features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
        name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
    )


class ActionInputs(nn.Module):
    """State token + noisy action tokens fused with the flow time, and the velocity read-out.

    The projections are fp32 outside the expert stack, as in the original.
    """

    config: ActionConfig
    precision: Precision

    def setup(self):
        c = self.config
        self.state_proj = _dense(c.width, (None, "embed"), "state_proj")
        self.action_in_proj = _dense(c.width, (None, "embed"), "action_in_proj")
        # The time MLP is small and stays unsharded over `tensor`: with its input dim on `tensor`, XLA
        # (JAX 0.10.2, CPU) miscomputed it on a (2, 2, 2) mesh (tests/training caught it).
        self.action_time_mlp_in = _dense(c.width, (None, "embed"), "action_time_mlp_in")
        self.action_time_mlp_out = _dense(c.width, (None, "embed"), "action_time_mlp_out")
        self.action_out_proj = _dense(c.action_dim, ("embed", None), "action_out_proj")

    def __call__(self, state: jax.Array, noisy_actions: jax.Array, t: jax.Array) -> jax.Array:
        """Suffix tokens for the action expert.

        Args:
          state: [B, state_dim]; noisy_actions: [B, chunk, action_dim]; t: [B].
        Returns:
          [B, 1 + chunk, width]: the state token, then one token per action step.
        """
        c = self.config
        if state.shape[-1] != c.state_dim or noisy_actions.shape[-1] != c.action_dim:
            raise ValueError(
                f"state must be [B, {c.state_dim}] and actions [B, chunk, {c.action_dim}] "
                f"(zero-padded); got {state.shape} and {noisy_actions.shape}."
            )
        state_token = self.state_proj(state.astype(jnp.float32))[:, None]
        time_emb = sinusoidal_time_embedding(t, c.width, c.min_period, c.max_period)
        action_tokens = self.action_in_proj(noisy_actions.astype(jnp.float32))
        time_tokens = jnp.broadcast_to(time_emb[:, None], action_tokens.shape)
        fused = self.action_time_mlp_in(jnp.concatenate([action_tokens, time_tokens], axis=-1))
        fused = self.action_time_mlp_out(nn.silu(fused))
        if self.is_initializing():  # the read-out is only used by `velocity`; create it here too
            self.action_out_proj(jnp.zeros((1, c.width), jnp.float32))
        return jnp.concatenate([state_token, fused], axis=1)

    def velocity(self, action_outputs: jax.Array) -> jax.Array:
        """[B, chunk, width] action-expert outputs -> [B, chunk, action_dim] fp32 velocities."""
        return self.action_out_proj(action_outputs.astype(jnp.float32))


def sample_flow_time(rng: jax.Array, batch: int) -> jax.Array:
    """t = 0.999 * Beta(1.5, 1) + 0.001: skewed towards the noisy end, never exactly 0. [B]."""
    return 0.999 * jax.random.beta(rng, 1.5, 1.0, (batch,), jnp.float32) + 0.001


def noisy_actions(actions: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = t * noise + (1 - t) * actions, with t [B] broadcast over [B, chunk, dim]."""
    t = t[:, None, None]
    return t * noise + (1.0 - t) * actions


def flow_matching_loss(
    velocity: jax.Array, noise: jax.Array, actions: jax.Array, action_is_pad: jax.Array
) -> jax.Array:
    """Mean squared error to the target velocity `noise - actions`, as the original computes it.

    Steps past the episode end (`action_is_pad` [B, chunk]) are zeroed but stay in the denominator,
    and the zero-padded action dims are part of the mean (docs/model.md, "Quirks").
    """
    error = jnp.square((noise - actions) - velocity.astype(jnp.float32))
    return jnp.mean(error * (~action_is_pad)[..., None])


def euler_sample(
    velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array, num_steps: int
) -> jax.Array:
    """Integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 with `num_steps` Euler steps.

    Time advances in fp32 by repeated addition of dt, exactly as the original loop does, so the
    times seen are 1.0, 0.9, 0.8000001, ... The input `noise` is not modified.

    Args:
      velocity_fn: (x_t [B, chunk, dim], t [B]) -> v_t [B, chunk, dim].
      noise: [B, chunk, dim] fp32 starting point.
    Returns:
      [B, chunk, dim] fp32 samples.
    """
    dt = jnp.float32(-1.0 / num_steps)

    def step(_, carry):
        x, t = carry
        v = velocity_fn(x, jnp.broadcast_to(t, (x.shape[0],)))
        return x + dt * v.astype(jnp.float32), t + dt

    x, _ = jax.lax.fori_loop(0, num_steps, step, (noise.astype(jnp.float32), jnp.float32(1.0)))
    return x
