"""F1's joint attention through TPU splash attention (`model.attention="splash"`).

The block mask splits into a static part (each token's block: the same for every example) and
the per-example pad (`masks.BlockMask`). Splash attention takes the static part as its mask, at
compile time, and skips the tiles that no query attends; the pad becomes its segment ids (real
tokens 1, padding 0), so a real query sees exactly the real keys of its own and earlier blocks.
Padded queries see other padding instead of nothing: their outputs differ from the XLA path's,
but no real token ever reads them (they are padding keys) and no loss uses them.

F1 has one KV head, so this is the multi-query kernel. The sequences are padded to whole
128-token tiles (extra tokens are padding of a block after every other one). Under a mesh, each
device runs the kernel on its part of the batch (`shard_map` over the batch axes). With
`"splash_interpret"` the same kernel runs in Pallas's interpreter on any backend: that is how the
tests compare it with the XLA path on a CPU.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec

from f1_jax.models.masks import BlockMask

TILE = 128  # splash's block size along both sequences


def _round_up(n: int) -> int:
    return -(-n // TILE) * TILE


def _kernel(q_blocks: tuple[int, ...], kv_blocks: tuple[int, ...], heads: int, interpret: bool):
    static = np.asarray(kv_blocks)[None, :] <= np.asarray(q_blocks)[:, None]
    mask = mask_lib.MultiHeadMask([mask_lib.NumpyMask(static) for _ in range(heads)])
    return kernels.make_splash_mqa(
        mask,
        block_sizes=kernels.BlockSizes.get_default(),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _padded_blocks(blocks: tuple[int, ...], length: int) -> tuple[int, ...]:
    return blocks + (max(blocks) + 1,) * (length - len(blocks))


def splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: BlockMask, interpret: bool = False
) -> jax.Array:
    """`gemma.joint_attention` through splash attention.

    Args:
      q: [B, T, N, H] queries (already rotated).
      k, v: [B, S, 1, H] keys and values (one KV head).
      mask: the block mask of T queries over S keys.
      interpret: run the kernel in Pallas's interpreter (any backend; slow).
    Returns:
      [B, T, N, H] in q's dtype.
    """
    batch, num_q, heads, head_dim = q.shape
    num_kv = k.shape[1]
    if k.shape[2] != 1:
        raise ValueError(f"splash attention here is multi-query (1 KV head), got {k.shape[2]}")
    if mask.shape != (batch, num_q, num_kv):
        raise ValueError(f"mask {mask.shape} does not match queries {q.shape} and keys {k.shape}")
    padded_q, padded_kv = _round_up(num_q), _round_up(num_kv)
    # Made per call, inside this trace: its mask tables are arrays of this trace (a kernel kept
    # across traces would leak them).
    kernel = _kernel(
        _padded_blocks(mask.q_blocks, padded_q),
        _padded_blocks(mask.kv_blocks, padded_kv),
        heads,
        interpret,
    )

    def pad_to(x: jax.Array, length: int, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)

    # The XLA path scales the fp32 logits; here q is scaled first (exact for a power-of-4 head
    # dim, F1's 256 included).
    scaled = (q.astype(jnp.float32) * head_dim**-0.5).astype(q.dtype)
    q_heads = pad_to(scaled.transpose(0, 2, 1, 3), padded_q, 2)  # [B, N, T', H]
    keys, values = (pad_to(x[:, :, 0], padded_kv, 1) for x in (k, v))  # [B, S', H]
    q_segments = pad_to(mask.q_pad.astype(jnp.int32), padded_q, 1)
    kv_segments = pad_to(mask.kv_pad.astype(jnp.int32), padded_kv, 1)

    def per_example(q, k, v, q_seg, kv_seg):
        return kernel(q, k, v, segment_ids=kernels.SegmentIds(q=q_seg, kv=kv_seg))

    attend = jax.vmap(per_example)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        # The kernel is not partitioned by the compiler: each device takes its examples.
        spec = PartitionSpec(nn.logical_to_mesh_axes(("activation_batch",))[0])
        attend = jax.shard_map(attend, in_specs=spec, out_specs=spec, check_vma=False)
    out = attend(q_heads, keys, values, q_segments, kv_segments)  # [B, N, T', H]
    return out[:, :, :num_q].transpose(0, 2, 1, 3).astype(q.dtype)
