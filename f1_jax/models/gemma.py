"""Gemma blocks and the multi-expert joint-attention stack (docs/model.md, "Three experts").

Each expert (understanding, generation, action) has its own norms, Q/K/V/O projections and GeGLU
MLP; in every layer the Q/K/V of all present experts are concatenated along the sequence axis and go
through ONE attention, then the output is split back per expert. The experts share depth, query
heads, KV heads and head dim; widths and MLP widths differ. An expert given `None` is skipped: its
tokens then exist only through the KV cache.

Parameters (per expert, stacked on a leading `layers` axis by `nn.scan`) use the einsum layouts of
big_vision / openpi so their checkpoints map one-to-one:
  q_einsum [N, D, H], kv_einsum [2, K, D, H], attn_vec_einsum [N, H, D],
  gating_einsum [2, D, F], linear [F, D], pre_attention_norm/scale [D], pre_ffw_norm/scale [D].
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from f1_common.model_config import (
    RMS_NORM_EPS,
    ROPE_BASE,
    ExpertConfig,
    check_expert_configs,
)
from f1_jax.models import remat
from f1_jax.models.precision import Precision

# The fp32 masking constant of the original (and openpi): the most negative value that still
# survives the softmax's max-subtraction without overflowing.
MASK_VALUE = -2.3819763e38

KVCache = tuple[jax.Array, jax.Array]  # keys, values: [layers, B, S, K, H] each

GEMMA_INIT_STD = 0.02  # HF Gemma's initializer_range


def initializer(config: ExpertConfig, fan_in: int) -> nn.initializers.Initializer:
    """Initializer of a projection of expert `config` whose output sums over `fan_in` inputs:
    normal(0.02) ("gemma") or normal(1/sqrt(fan_in)) ("fan_in"), see `ExpertConfig.param_init`."""
    return nn.initializers.normal(GEMMA_INIT_STD if config.param_init == "gemma" else fan_in**-0.5)


def _param(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    init: nn.initializers.Initializer,
) -> jax.Array:
    """A fp32 parameter carrying logical axis names (used by the sharding rules)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def constrain_activations(x: jax.Array) -> jax.Array:
    """Keeps a [B, T, D] activation split along the batch (FSDP): without it the compiler may
    follow the FSDP-sharded weights and replicate the batch. A no-op outside a mesh + rules."""
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + scale)`, computed in fp32."""

    eps: float = RMS_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.zeros_init())
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + scale)).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, base: float = ROPE_BASE) -> jax.Array:
    """Rotary embedding, rotate-half convention, computed in fp32, as the original.

    Args:
      x: [B, T, heads, H].
      positions: [B, T] int.
    Returns:
      [B, T, heads, H] in x's dtype.
    """
    half = x.shape[-1] // 2
    timescale = base ** ((2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32))
    radians = positions.astype(jnp.float32)[..., None, None] / timescale  # [B, T, 1, half]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def joint_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, precision: Precision
) -> jax.Array:
    """Grouped-query softmax attention with a boolean mask; logits and softmax in fp32.

    Args:
      q: [B, T, N, H] queries (already rotated).
      k, v: [B, S, K, H] keys and values, N a multiple of K.
      mask: [B, T, S] bool, True where query t may attend to key s.
    Returns:
      [B, T, N, H] in the compute dtype.
    """
    batch, num_q, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    q = q.reshape(batch, num_q, num_kv, num_heads // num_kv, head_dim)
    logits = (
        jnp.einsum(
            "BTKGH,BSKH->BKGTS",
            q,
            k,
            precision=precision.matmul_precision,
            preferred_element_type=jnp.float32,
        )
        * head_dim**-0.5
    )
    logits = jnp.where(mask[:, None, None, :, :], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "BKGTS,BSKH->BTKGH", precision.cast(probs), v, precision=precision.matmul_precision
    )
    return out.reshape(batch, num_q, num_heads, head_dim)


class ExpertLayer(nn.Module):
    """One expert's weights in one layer: the parts before and after the joint attention."""

    config: ExpertConfig
    precision: Precision

    def setup(self):
        c = self.config
        self.pre_attention_norm = RMSNorm()
        self.pre_ffw_norm = RMSNorm()
        embed_init, mlp_init = initializer(c, c.width), initializer(c, c.mlp_dim)
        self.q_einsum = _param(
            self,
            "q_einsum",
            (c.num_heads, c.width, c.head_dim),
            ("q_heads", "embed", "head_dim"),
            embed_init,
        )
        self.kv_einsum = _param(
            self,
            "kv_einsum",
            (2, c.num_kv_heads, c.width, c.head_dim),
            (None, "kv_heads", "embed", "head_dim"),
            embed_init,
        )
        self.attn_vec_einsum = _param(
            self,
            "attn_vec_einsum",
            (c.num_heads, c.head_dim, c.width),
            ("q_heads", "head_dim", "embed"),
            initializer(c, c.num_heads * c.head_dim),
        )
        self.gating_einsum = _param(
            self, "gating_einsum", (2, c.width, c.mlp_dim), (None, "embed", "mlp"), embed_init
        )
        self.linear = _param(self, "linear", (c.mlp_dim, c.width), ("mlp", "embed"), mlp_init)

    def _einsum(self, spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
        p = self.precision
        return jnp.einsum(spec, p.cast(x), p.cast(w), precision=p.matmul_precision)

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """[B, T, D] -> q [B, T, N, H], k and v [B, T, K, H] (before RoPE)."""
        h = self.pre_attention_norm(x)
        q = self._einsum("BTD,NDH->BTNH", h, self.q_einsum)
        k = self._einsum("BTD,KDH->BTKH", h, self.kv_einsum[0])
        v = self._einsum("BTD,KDH->BTKH", h, self.kv_einsum[1])
        return q, k, v

    def finish(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        """Output projection, residual, pre-FFW norm, GeGLU MLP, residual. [B, T, D] -> [B, T, D]."""
        out = remat.tag(
            self._einsum("BTNH,NHD->BTD", attended, self.attn_vec_einsum), "attention_out"
        )
        x = x + out.astype(x.dtype)
        h = self.pre_ffw_norm(x)
        gate = self._einsum("BTD,DF->BTF", h, self.gating_einsum[0])
        up = self._einsum("BTD,DF->BTF", h, self.gating_einsum[1])
        hidden = jax.nn.gelu(gate, approximate=True) * up
        return x + self._einsum("BTF,FD->BTD", hidden, self.linear).astype(x.dtype)


class Block(nn.Module):
    """One layer of the stack: per-expert projections around one joint attention."""

    experts: tuple[ExpertConfig, ...]
    precision: Precision
    rope_base: float

    @nn.compact
    def __call__(
        self,
        xs: list[jax.Array | None],
        kv_cache: KVCache | None,
        positions: jax.Array,
        mask: jax.Array,
    ) -> tuple[list[jax.Array | None], KVCache]:
        layers = [ExpertLayer(c, self.precision, name=c.name) for c in self.experts]
        xs = [None if x is None else constrain_activations(x) for x in xs]
        projected = [layer.qkv(x) for layer, x in zip(layers, xs) if x is not None]
        q, k, v = (jnp.concatenate(parts, axis=1) for parts in zip(*projected))
        q = remat.tag(apply_rope(q, positions, self.rope_base), "query_proj")
        k = remat.tag(apply_rope(k, positions, self.rope_base), "key_proj")
        v = remat.tag(v, "value_proj")
        if kv_cache is not None:  # Cached keys come first: they belong to earlier tokens.
            k = jnp.concatenate([kv_cache[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([kv_cache[1].astype(v.dtype), v], axis=1)
        attended = remat.tag(joint_attention(q, k, v, mask, self.precision), "attention_context")

        outs, start = [], 0
        for layer, x in zip(layers, xs):
            if x is None:
                outs.append(None)
                continue
            outs.append(layer.finish(x, attended[:, start : start + x.shape[1]]))
            start += x.shape[1]
        return outs, (k, v)


class Embedder(nn.Module):
    """Token embedding of the understanding expert, scaled by sqrt(width) as Gemma does."""

    vocab_size: int
    width: int
    # N(0, 0.02) as Gemma; from scratch at small width pass N(0, 1/sqrt(width)), so that embedded
    # words (x sqrt(width)) are as large as the image tokens beside them in the residual stream.
    embedding_init: nn.initializers.Initializer = nn.initializers.normal(GEMMA_INIT_STD)

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """[B, T] int -> [B, T, D] fp32."""
        shape = (self.vocab_size, self.width)
        table = _param(self, "input_embedding", shape, ("vocab", "embed"), self.embedding_init)
        return jnp.take(table, tokens, axis=0) * jnp.sqrt(jnp.float32(self.width))


class ExpertStack(nn.Module):
    """The multi-expert transformer: `depth` scanned Blocks and a final norm per expert."""

    experts: tuple[ExpertConfig, ...]
    precision: Precision
    rope_base: float = ROPE_BASE
    remat_policy: str = "none"
    unroll: bool = False  # unroll the layer scan (XLA's FLOP count sees a loop body once)

    @nn.compact
    def __call__(
        self,
        embedded: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """Runs all layers over the tokens of the present experts.

        Args:
          embedded: one [B, T_i, D_i] array per expert, in config order, or None to skip an expert.
          positions: [B, T] int RoPE positions of the T = sum(T_i) new tokens.
          mask: [B, T, S] bool, S = cached tokens + T.
          kv_cache: keys and values [depth, B, S_cache, K, H] of earlier tokens, or None.
        Returns:
          Per-expert outputs after the final norm (None where the input was None), and the KV cache of
          cached + new tokens. Keep it to append later tokens; ignore it to read the cache unchanged.
        """
        check_expert_configs(self.experts)
        block = remat.remat_layer(Block, self.remat_policy)
        xs = self._check_inputs(embedded, positions, mask, kv_cache)
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=self.experts[0].depth,
            unroll=self.experts[0].depth if self.unroll else 1,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        xs, new_cache = layers(self.experts, self.precision, self.rope_base, name="layers")(
            xs, kv_cache, positions, mask
        )
        outs = [
            None if x is None else RMSNorm(name=f"final_norm_{c.name}")(x)
            for c, x in zip(self.experts, xs)
        ]
        return outs, new_cache

    def _check_inputs(self, embedded, positions, mask, kv_cache) -> list[jax.Array | None]:
        names = [e.name for e in self.experts]
        if len(embedded) != len(self.experts):
            raise ValueError(
                f"Got {len(embedded)} token groups for {len(self.experts)} experts {names}; "
                "pass None for an expert without tokens."
            )
        present = [(e, x) for e, x in zip(self.experts, embedded) if x is not None]
        if not present:
            raise ValueError(f"Every expert input is None; at least one of {names} needs tokens.")
        batch = present[0][1].shape[0]
        for e, x in present:
            if x.ndim != 3 or x.shape[0] != batch or x.shape[2] != e.width:
                raise ValueError(
                    f"Expert {e.name!r} expects tokens [B={batch}, T, {e.width}], got {x.shape}."
                )
        num_new = sum(x.shape[1] for _, x in present)
        num_cached = 0
        if kv_cache is not None:
            keys = kv_cache[0]
            expected = (
                self.experts[0].depth,
                batch,
                keys.shape[2],
                self.experts[0].num_kv_heads,
                self.experts[0].head_dim,
            )
            if keys.shape != expected or kv_cache[1].shape != expected:
                raise ValueError(
                    f"KV cache must be [depth, B, S, K, H] = {expected}, got "
                    f"{keys.shape} and {kv_cache[1].shape}."
                )
            num_cached = keys.shape[2]
        if positions.shape != (batch, num_new):
            raise ValueError(
                f"positions must be [B, T] = {(batch, num_new)} for the {num_new} new "
                f"tokens, got {positions.shape}."
            )
        expected_mask = (batch, num_new, num_cached + num_new)
        if mask.shape != expected_mask:
            raise ValueError(
                f"Attention mask must be [B, T, S] = {expected_mask} ({num_new} new tokens, "
                f"{num_cached} cached + {num_new} new keys), got {mask.shape}."
            )
        return [None if x is None else self.precision.cast(x) for x in embedded]
