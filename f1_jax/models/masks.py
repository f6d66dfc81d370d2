"""Block attention masks and RoPE position ids (docs/model.md, "Token layout").

A token group is described by two per-token vectors: `pad` (True for real tokens) and
`block_start` (1 where a new attention block starts). Token i may attend to token j when j's block
is not later than i's block and both are real tokens. A block therefore sees every earlier block and
itself bidirectionally: all 0s is a fully bidirectional prefix, all 1s is causal.
"""

import jax
import jax.numpy as jnp


def block_attention_mask(pad: jax.Array, block_start: jax.Array) -> jax.Array:
    """Cumulative block mask.

    Args:
      pad: [B, N] bool, True for real tokens.
      block_start: [B, N] int or bool, 1 where a new block starts.
    Returns:
      [B, N, N] bool, entry [b, i, j] says whether query i may attend to key j.
    """
    if pad.shape != block_start.shape or pad.ndim != 2:
        raise ValueError(
            f"pad and block_start must both be [B, N]; got {pad.shape} and {block_start.shape}"
        )
    blocks = jnp.cumsum(block_start.astype(jnp.int32), axis=1)
    allowed = blocks[:, None, :] <= blocks[:, :, None]
    real = pad.astype(bool)
    return allowed & real[:, None, :] & real[:, :, None]


def suffix_attention_mask(
    prefix_pad: jax.Array, suffix_pad: jax.Array, suffix_block_start: jax.Array
) -> jax.Array:
    """Mask of suffix queries over [prefix keys | suffix keys].

    Suffix tokens see every real prefix token (the prefix never sees the suffix); among themselves
    they follow the cumulative block rule.

    Args:
      prefix_pad: [B, P] bool.
      suffix_pad: [B, S] bool.
      suffix_block_start: [B, S] int.
    Returns:
      [B, S, P + S] bool.
    """
    num_suffix = suffix_pad.shape[1]
    prefix_part = jnp.broadcast_to(
        prefix_pad.astype(bool)[:, None, :], (prefix_pad.shape[0], num_suffix, prefix_pad.shape[1])
    )
    suffix_part = block_attention_mask(suffix_pad, suffix_block_start)
    return jnp.concatenate([prefix_part, suffix_part], axis=2)


def positions_from_pad(pad: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """RoPE position ids `offset + cumsum(pad) - 1`.

    Padding tokens repeat the previous id. A later token group continues the ids of an earlier one
    by passing `offset = sum(earlier_pad, axis=1)`.

    Args:
      pad: [B, N] bool.
      offset: scalar or [B] int, the number of real tokens before this group.
    Returns:
      [B, N] int32.
    """
    offset = jnp.asarray(offset, jnp.int32)
    if offset.ndim == 1:
        offset = offset[:, None]
    return offset + jnp.cumsum(pad.astype(jnp.int32), axis=1) - 1
