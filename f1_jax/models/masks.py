"""Block attention masks and RoPE position ids (docs/model.md, "Token layout").

A token group is described by two per-token vectors: `pad` (True for real tokens) and
`block_start` (1 where a new attention block starts). Token i may attend to token j when j's block
is not later than i's block and both are real tokens. A block therefore sees every earlier block and
itself bidirectionally: all 0s is a fully bidirectional prefix, all 1s is causal.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def block_attention_mask(pad: jax.Array, block_start: jax.Array) -> jax.Array:
    """Cumulative block mask.

    Args:
      pad: [B, N] bool, True for real tokens.
      block_start: [B, N] or [1, N] (the same layout for every example) int or bool, 1 where a
        new block starts.
    Returns:
      [B, N, N] bool, entry [b, i, j] says whether query i may attend to key j.
    """
    if (
        pad.ndim != 2
        or block_start.ndim != 2
        or block_start.shape[0] not in (1, pad.shape[0])
        or block_start.shape[1] != pad.shape[1]
    ):
        raise ValueError(
            f"pad must be [B, N] and block_start [B, N] or [1, N]; got {pad.shape} and "
            f"{block_start.shape}"
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
      suffix_block_start: [B, S] or [1, S] int.
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


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class BlockMask:
    """`block_attention_mask` kept in its two factors: which tokens are real (per example) and
    each token's block (the same for every example, so static). A kernel that knows the static
    part at compile time can skip the tiles it never attends (`f1_jax/models/splash.py`).

    Query i may attend to key j when kv_blocks[j] <= q_blocks[i] and both are real.
    """

    q_pad: jax.Array  # [B, T] bool
    kv_pad: jax.Array  # [B, S] bool
    q_blocks: tuple[int, ...]  # [T] block id of each query (static)
    kv_blocks: tuple[int, ...]  # [S] block id of each key (static)

    @classmethod
    def from_layout(cls, pad: jax.Array, block_start: np.ndarray) -> "BlockMask":
        """The mask of a sequence: pad [B, N] bool and its static block starts [N]."""
        blocks = tuple(int(b) for b in np.cumsum(np.asarray(block_start, np.int64)))
        if pad.shape[1:] != (len(blocks),):
            raise ValueError(f"pad {pad.shape} does not match {len(blocks)} block starts")
        return cls(pad.astype(bool), pad.astype(bool), blocks, blocks)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.q_pad.shape[0], len(self.q_blocks), len(self.kv_blocks))

    def static_mask(self) -> np.ndarray:
        """[T, S] bool: the block rule alone (every token real)."""
        return np.asarray(self.kv_blocks)[None, :] <= np.asarray(self.q_blocks)[:, None]

    def dense(self) -> jax.Array:
        """[B, T, S] bool, equal to `block_attention_mask` of the same layout."""
        return (
            jnp.asarray(self.static_mask())[None] & self.q_pad[:, :, None] & self.kv_pad[:, None, :]
        )

    def __getitem__(self, index: tuple[slice, ...]) -> "BlockMask":
        """mask[:, queries, keys] with slices, as on the dense mask."""
        if not isinstance(index, tuple) or len(index) > 3:
            raise IndexError(f"BlockMask takes [:, slice, slice], got {index}")
        batch, queries, keys = (index + (slice(None),) * 3)[:3]
        if batch != slice(None) or not isinstance(queries, slice) or not isinstance(keys, slice):
            raise IndexError(f"BlockMask takes [:, slice, slice], got {index}")
        return BlockMask(
            self.q_pad[:, queries],
            self.kv_pad[:, keys],
            self.q_blocks[queries],
            self.kv_blocks[keys],
        )

    def tree_flatten(self):
        return (self.q_pad, self.kv_pad), (self.q_blocks, self.kv_blocks)

    @classmethod
    def tree_unflatten(cls, static, arrays):
        return cls(*arrays, *static)
