"""SigLIP vision tower + linear projector, as PaliGemma uses it (no pooling head).

Image [B, H, W, 3] in [-1, 1] -> patch tokens [B, (H/p)*(W/p), out_width] in the understanding
expert's width. Pre-LN transformer blocks with tanh-GELU MLPs, then `post_layernorm`, then the
`multi_modal_projector` Linear. Module names follow transformers' `SiglipVisionModel` so the
conversion tables stay short. The patch embedding and position embedding run in fp32 (as openpi
does) before the stream is cast to the compute dtype; layer norms and softmax are fp32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from f1_common.model_config import SiglipConfig
from f1_jax.models import remat
from f1_jax.models.gemma import constrain_activations
from f1_jax.models.precision import Precision


def sincos_2d(side: int, width: int, period: float) -> np.ndarray:
    """float32 [side * side, width]: sin and cos of the column, then of the row index (row-major
    patches), at width // 4 frequencies geometric from 1 down to 1 / period."""
    if width % 4:
        raise ValueError(f"sincos2d needs a width divisible by 4, got {width}")
    freqs = 1.0 / period ** (np.arange(width // 4) / (width // 4))
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    parts = []
    for coord in (cols.reshape(-1, 1), rows.reshape(-1, 1)):
        parts += [np.sin(coord * freqs), np.cos(coord * freqs)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _posemb_init(c: SiglipConfig) -> nn.initializers.Initializer:
    normal = nn.initializers.normal(1 / c.width**0.5)
    if c.posemb_init == "normal":
        return normal

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        side = c.image_size // c.patch_size
        return normal(key, shape, dtype) + jnp.asarray(sincos_2d(side, c.width, c.posemb_period))

    return init


def _dense(features: int, axes: tuple[str, str], precision: Precision, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=precision.compute_dtype,
        param_dtype=jnp.float32,
        precision=precision.matmul_precision,
        name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
    )


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it; fast variance loses digits at parity tolerance.
    return nn.LayerNorm(
        epsilon=eps,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
    )


class SiglipAttention(nn.Module):
    """Bidirectional multi-head self-attention with biased q/k/v/out projections."""

    config: SiglipConfig
    precision: Precision

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, p = self.config, self.precision
        head_dim = c.width // c.num_heads
        split = lambda t: t.reshape(*t.shape[:-1], c.num_heads, head_dim)
        q = remat.tag(split(_dense(c.width, ("embed", "heads"), p, "q_proj")(x)), "query_proj")
        k = remat.tag(split(_dense(c.width, ("embed", "heads"), p, "k_proj")(x)), "key_proj")
        v = remat.tag(split(_dense(c.width, ("embed", "heads"), p, "v_proj")(x)), "value_proj")
        logits = (
            jnp.einsum(
                "BTNH,BSNH->BNTS",
                q,
                k,
                precision=p.matmul_precision,
                preferred_element_type=jnp.float32,
            )
            * head_dim**-0.5
        )
        probs = p.cast(jax.nn.softmax(logits, axis=-1))
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v, precision=p.matmul_precision)
        out = remat.tag(out.reshape(*x.shape[:-1], c.width), "attention_context")
        return remat.tag(_dense(c.width, ("heads", "embed"), p, "out_proj")(out), "attention_out")


class SiglipBlock(nn.Module):
    """Pre-LN encoder layer; the scan carry is the token stream."""

    config: SiglipConfig
    precision: Precision

    @nn.compact
    def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
        c, p = self.config, self.precision
        x = constrain_activations(x)
        h = p.cast(_layer_norm(c.eps, "layer_norm1")(x))
        x = x + SiglipAttention(c, p, name="self_attn")(h)
        h = p.cast(_layer_norm(c.eps, "layer_norm2")(x))
        h = _dense(c.mlp_dim, ("embed", "mlp"), p, "fc1")(h)
        h = _dense(c.width, ("mlp", "embed"), p, "fc2")(jax.nn.gelu(h, approximate=True))
        return x + h, None


class SiglipEncoder(nn.Module):
    """SigLIP tower + projector. The projector output is what the understanding expert consumes."""

    config: SiglipConfig
    precision: Precision
    remat_policy: str = "none"
    unroll: bool = False  # unroll the layer scan (XLA's FLOP count sees a loop body once)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] in [-1, 1] -> [B, num_patches, out_width] in the compute dtype."""
        c, p = self.config, self.precision
        if images.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(
                f"SigLIP expects images [B, {c.image_size}, {c.image_size}, 3], got {images.shape}."
            )
        patches = nn.Conv(
            c.width,
            (c.patch_size, c.patch_size),
            strides=c.patch_size,
            padding="VALID",
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            precision=jax.lax.Precision.HIGHEST,
            name="patch_embedding",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, None, "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        )(images.astype(jnp.float32))
        tokens = patches.reshape(patches.shape[0], -1, c.width)
        position_embedding = self.param(
            "position_embedding",
            nn.with_logical_partitioning(_posemb_init(c), (None, "embed")),
            (c.num_patches, c.width),
            jnp.float32,
        )
        x = p.cast(tokens + position_embedding[None])

        block = remat.remat_layer(SiglipBlock, self.remat_policy)
        x, _ = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=c.depth,
            unroll=c.depth if self.unroll else 1,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, p, name="layers")(x, None)
        x = p.cast(_layer_norm(c.eps, "post_layernorm")(x))
        return _dense(c.out_width, ("embed", "embed_out"), p, "projector")(x)
