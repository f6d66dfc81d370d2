"""VAR's multi-scale residual VQ-VAE (``vae_ch160v4096z32``) in Flax linen, NHWC layout.

F1 uses this tokenizer frozen, to turn world-model frames into 10 scales of codebook
indices (1x1 ... 16x16 = 680 tokens) and to build the next-scale inputs of its generation
expert. The math follows FoundationVision/VAR (models/basic_vae.py, vqvae.py, quant.py):

* Encoder/Decoder: LDM-style conv nets (GroupNorm(32, eps 1e-6) + SiLU + 3x3 convs,
  single-head spatial self-attention at the lowest resolution and in the middle).
* Quantizer: one shared codebook; at scale ``si`` the residual ``f_rest`` is area-resized
  to ``pn x pn``, looked up by squared-L2 argmin, bicubic-upsampled back to the latent size,
  refined by a "Phi" conv (``(1-r) h + r conv(h)``) and accumulated into ``f_hat``.

Resizes use :mod:`f1_jax.models.resize` (exact PyTorch ``area``/``bicubic``), because
``jax.image.resize`` does not reproduce either. Parameter paths mirror the PyTorch
state-dict keys with ``.`` -> ``/`` and list indices ``.i`` -> ``_i``, e.g.
``encoder.down.0.block.1.norm1.weight`` -> ``encoder/down_0/block_1/norm1/scale`` and
``quantize.quant_resi.qresi_ls.2.weight`` -> ``quantize/quant_resi/qresi_ls_2/kernel``.
Conv kernels are ``[kh, kw, in, out]`` (torch ``weight.transpose(2, 3, 1, 0)``); the
codebook is ``quantize/embedding`` ``[vocab, z]``. The ``ema_vocab_hit_SV`` buffer (usage
statistics of VAE training) is not part of this inference port.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from f1_common.model_config import VQVAEConfig, phi_index
from f1_jax.models.resize import resize_area, resize_bicubic

__all__ = [
    "VQVAE",
    "Encoder",
    "Decoder",
    "VectorQuantizer",
    "ResnetBlock",
    "AttnBlock",
    "Downsample",
    "Upsample",
    "Conv2d",
    "Phi",
    "conv2d",
]

Dtype = Any
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    stride: int = 1,
    padding: int = 0,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Torch-style ``Conv2d`` on NHWC: ``x [B,H,W,I]``, ``kernel [kh,kw,I,O]`` -> ``[B,H',W',O]``.

    Symmetric zero padding ``padding`` on H and W, full-precision accumulation.
    """
    y = jax.lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
    )
    if bias is not None:
        y = y + bias.astype(dtype)
    return y


def _torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv init bound ``1/sqrt(fan_in)`` (kaiming_uniform, a=sqrt(5))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` with params ``kernel [k,k,I,O]`` and ``bias [O]``."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        init = _torch_uniform(cin * k * k)
        kernel = self.param("kernel", init, (k, k, cin, self.features), self.param_dtype)
        bias = self.param("bias", init, (self.features,), self.param_dtype)
        return conv2d(x, kernel, bias, self.stride, self.padding, self.dtype)


def _group_norm(groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    # Two-pass variance (use_fast_variance=False) as torch's group_norm; fp32 statistics.
    return nn.GroupNorm(
        num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name
    )


class ResnetBlock(nn.Module):
    """``nin_shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))``.

    ``nin_shortcut`` is a 1x1 conv only when the channel count changes.
    """

    out_channels: int
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g, eps, dt = self.norm_groups, self.norm_eps, self.dtype
        h = nn.silu(_group_norm(g, eps, dt, "norm1")(x))
        h = Conv2d(self.out_channels, 3, padding=1, dtype=dt, name="conv1")(h)
        h = nn.silu(_group_norm(g, eps, dt, "norm2")(h))
        h = Conv2d(self.out_channels, 3, padding=1, dtype=dt, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv2d(self.out_channels, 1, padding=0, dtype=dt, name="nin_shortcut")(x)
        return x.astype(h.dtype) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, ``x + proj_out(attn(norm(x)))``.

    ``qkv`` is one 1x1 conv to 3C channels ordered [q | k | v]; the scale is ``C**-0.5``.
    """

    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        dt = self.dtype
        h = _group_norm(self.norm_groups, self.norm_eps, dt, "norm")(x)
        qkv = Conv2d(3 * c, 1, padding=0, dtype=dt, name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, hh * ww, 3 * c), 3, axis=-1)
        logits = jnp.einsum("bic,bjc->bij", q, k, precision=_HIGHEST) * (c**-0.5)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dt)
        out = jnp.einsum("bij,bjc->bic", weights, v, precision=_HIGHEST)
        out = Conv2d(c, 1, padding=0, dtype=dt, name="proj_out")(out.reshape(b, hh, ww, c))
        return x.astype(out.dtype) + out


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a 3x3 stride-2 VALID conv (H, W -> H/2, W/2)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Torch pads (0, 1, 0, 1): the extra row/column is only on the high side.
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return Conv2d(x.shape[-1], 3, stride=2, padding=0, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (pixel repeat), then a 3x3 conv."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return Conv2d(x.shape[-1], 3, padding=1, dtype=self.dtype, name="conv")(x)


class _Level(nn.Module):
    """One resolution level: ``block_i`` (+ ``attn_i`` after each block), then a resample."""

    out_channels: int
    num_blocks: int
    use_attn: bool
    resample: str | None  # "down", "up" or None
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        g, eps, dt = self.norm_groups, self.norm_eps, self.dtype
        for i in range(self.num_blocks):
            h = ResnetBlock(self.out_channels, g, eps, dt, name=f"block_{i}")(h)
            if self.use_attn:
                h = AttnBlock(g, eps, dt, name=f"attn_{i}")(h)
        if self.resample == "down":
            h = Downsample(dt, name="downsample")(h)
        elif self.resample == "up":
            h = Upsample(dt, name="upsample")(h)
        return h


class _Mid(nn.Module):
    """``block_2(attn_1(block_1(h)))`` at constant width."""

    use_attn: bool
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        g, eps, dt = self.norm_groups, self.norm_eps, self.dtype
        c = h.shape[-1]
        h = ResnetBlock(c, g, eps, dt, name="block_1")(h)
        if self.use_attn:
            h = AttnBlock(g, eps, dt, name="attn_1")(h)
        return ResnetBlock(c, g, eps, dt, name="block_2")(h)


class Encoder(nn.Module):
    """Image ``[B, H, W, in_channels]`` -> latent ``[B, H/r, W/r, z_channels]`` (r = 2**(L-1))."""

    config: VQVAEConfig
    double_z: bool = False  # VAR's VQVAE always builds the encoder with double_z=False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt = self.config, self.dtype
        g, eps = c.norm_groups, c.norm_eps
        h = Conv2d(c.ch, 3, padding=1, dtype=dt, name="conv_in")(x)
        n = len(c.ch_mult)
        for i, mult in enumerate(c.ch_mult):
            last = i == n - 1
            h = _Level(
                out_channels=c.ch * mult,
                num_blocks=c.num_res_blocks,
                use_attn=last and c.using_sa,
                resample=None if last else "down",
                norm_groups=g,
                norm_eps=eps,
                dtype=dt,
                name=f"down_{i}",
            )(h)
        h = _Mid(c.using_mid_sa, g, eps, dt, name="mid")(h)
        h = nn.silu(_group_norm(g, eps, dt, "norm_out")(h))
        out_ch = 2 * c.z_channels if self.double_z else c.z_channels
        return Conv2d(out_ch, 3, padding=1, dtype=dt, name="conv_out")(h)


class Decoder(nn.Module):
    """Latent ``[B, h, w, z_channels]`` -> image ``[B, h*r, w*r, in_channels]`` (unclamped)."""

    config: VQVAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c, dt = self.config, self.dtype
        g, eps = c.norm_groups, c.norm_eps
        n = len(c.ch_mult)
        h = Conv2d(c.ch * c.ch_mult[-1], 3, padding=1, dtype=dt, name="conv_in")(z)
        h = _Mid(c.using_mid_sa, g, eps, dt, name="mid")(h)
        for i in reversed(range(n)):  # torch runs up[4] ... up[0]
            h = _Level(
                out_channels=c.ch * c.ch_mult[i],
                num_blocks=c.num_res_blocks + 1,
                use_attn=i == n - 1 and c.using_sa,
                resample="up" if i != 0 else None,
                norm_groups=g,
                norm_eps=eps,
                dtype=dt,
                name=f"up_{i}",
            )(h)
        h = nn.silu(_group_norm(g, eps, dt, "norm_out")(h))
        return Conv2d(c.in_channels, 3, padding=1, dtype=dt, name="conv_out")(h)


# --------------------------------------------------------------------------------------
# Multi-scale residual quantizer
# --------------------------------------------------------------------------------------


class Phi(nn.Module):
    """VAR's ``Phi``: ``h * (1 - r) + conv3x3(h) * r`` with ``r = |quant_resi|``.

    Params ``kernel [3,3,C,C]`` and ``bias [C]`` sit directly on this module (torch's Phi
    subclasses Conv2d), so paths are ``.../qresi_ls_k/kernel``.
    """

    quant_resi: float

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = h.shape[-1]
        init = _torch_uniform(c * 9)
        kernel = self.param("kernel", init, (3, 3, c, c), jnp.float32)
        bias = self.param("bias", init, (c,), jnp.float32)
        r = abs(self.quant_resi)
        return h * (1 - r) + conv2d(h, kernel, bias, 1, 1, jnp.float32) * r


class _QuantResi(nn.Module):
    """The Phi bank: ``qresi_ls_k`` (share_quant_resi 0 or K>1) or ``qresi`` (share 1)."""

    config: VQVAEConfig

    def setup(self) -> None:
        c = self.config
        if c.num_phis == 0:
            return
        if c.share_quant_resi == 1:
            self.qresi = Phi(c.quant_resi)
        else:
            # Non-shared mode (torch keys quant_resi.{k}) also lands on qresi_ls_{k}.
            self.qresi_ls = [Phi(c.quant_resi) for _ in range(c.num_phis)]

    def __call__(self, h: jax.Array, si: int) -> jax.Array:
        """Apply the Phi of scale ``si`` (static Python int)."""
        c = self.config
        if c.num_phis == 0:
            return h
        if c.share_quant_resi == 1:
            return self.qresi(h)
        return self.qresi_ls[phi_index(si, c.num_scales, c.num_phis)](h)

    def apply_all(self, h: jax.Array) -> list[jax.Array]:
        """Every Phi applied to ``h`` (used at init so all Phi params get created)."""
        c = self.config
        if c.num_phis == 0:
            return []
        if c.share_quant_resi == 1:
            return [self.qresi(h)]
        return [phi(h) for phi in self.qresi_ls]


class VectorQuantizer(nn.Module):
    """VAR's ``VectorQuantizer2`` (inference parts), fp32 throughout like VAR.

    All per-scale loops are Python loops over the static ``patch_nums``; ``si`` arguments
    must be Python ints.
    """

    config: VQVAEConfig

    def setup(self) -> None:
        c = self.config
        # nn.Embedding's N(0, 1) init; real weights come from the checkpoint.
        self.embedding = self.param(
            "embedding", nn.initializers.normal(1.0), (c.vocab_size, c.z_channels), jnp.float32
        )
        self.quant_resi = _QuantResi(c)

    # -- small pieces ------------------------------------------------------------------

    def phi(self, h: jax.Array, si: int) -> jax.Array:
        """``[..., L, L, z]`` -> same: the Phi refinement of scale ``si``."""
        return self.quant_resi(h, si)

    def apply_all_phis(self, h: jax.Array) -> list[jax.Array]:
        return self.quant_resi.apply_all(h)

    def lookup(self, z: jax.Array) -> jax.Array:
        """Nearest code for each vector: ``z [..., z_ch]`` -> int32 ``[...]``.

        Squared L2 as VAR: ``|z|^2 + |e|^2 - 2 z.e``, argmin (first index on ties); with
        ``using_znorm`` the cosine-similarity argmax instead.
        """
        c = self.config
        lead = z.shape[:-1]
        z2 = z.reshape(-1, c.z_channels).astype(jnp.float32)
        emb = self.embedding
        if c.using_znorm:
            zn = z2 / jnp.maximum(jnp.linalg.norm(z2, axis=-1, keepdims=True), 1e-12)
            en = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
            idx = jnp.argmax(jnp.matmul(zn, en.T, precision=_HIGHEST), axis=-1)
        else:
            d = jnp.sum(z2 * z2, axis=1, keepdims=True) + jnp.sum(emb * emb, axis=1)
            d = d - 2.0 * jnp.matmul(z2, emb.T, precision=_HIGHEST)
            idx = jnp.argmin(d, axis=-1)
        return idx.astype(jnp.int32).reshape(lead)

    def embed(self, idx: jax.Array) -> jax.Array:
        """Codebook rows: int ``[...]`` -> ``[..., z_ch]`` fp32."""
        return jnp.take(self.embedding, idx, axis=0)

    def embed_scale(self, idx: jax.Array) -> jax.Array:
        """Token indices of one scale ``[B, pn*pn]`` (row-major) -> ``[B, pn, pn, z]``."""
        b, n = idx.shape
        pn = math.isqrt(n)
        if pn * pn != n:
            raise ValueError(f"{n} tokens is not a square scale")
        return self.embed(idx).reshape(b, pn, pn, self.config.z_channels)

    def _to_latent(self, h: jax.Array, si: int) -> jax.Array:
        """Bicubic-upsample scale ``si``'s map to the latent size (not for the last scale)."""
        c = self.config
        if si == c.num_scales - 1:
            return h
        return resize_bicubic(h, (c.latent_size, c.latent_size))

    # -- encode / decode ---------------------------------------------------------------

    def quantize_latent(self, f: jax.Array) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
        """VAR's ``f_to_idxBl_or_fhat`` for both outputs at once.

        Args:
          f: ``[B, L, L, z]`` encoder latent (quant_conv output), L = ``patch_nums[-1]``.
        Returns:
          ``idx_list``: int32 ``[B, pn*pn]`` per scale (row-major h, w);
          ``fhat_list``: the cumulative ``f_hat`` ``[B, L, L, z]`` after each scale;
          ``f_rest``: the final residual, so that ``fhat_list[-1] + f_rest == f``.
        """
        c = self.config
        b, hh, ww, _ = f.shape
        if (hh, ww) != (c.latent_size, c.latent_size):
            raise ValueError(f"latent {hh}x{ww} != last patch size {c.latent_size}")
        f_rest = f.astype(jnp.float32)
        f_hat = jnp.zeros_like(f_rest)
        idx_list, fhat_list = [], []
        for si, pn in enumerate(c.patch_nums):
            last = si == c.num_scales - 1
            z = f_rest if last else resize_area(f_rest, (pn, pn))
            idx = self.lookup(z)  # [B, pn, pn]
            h = self.phi(self._to_latent(self.embed(idx), si), si)
            f_hat = f_hat + h
            f_rest = f_rest - h
            idx_list.append(idx.reshape(b, pn * pn))
            fhat_list.append(f_hat)
        return idx_list, fhat_list, f_rest

    def idx_list_to_fhat(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """``embed_to_fhat(all_to_max_scale=True, last_one=True)``: sum over scales of
        ``Phi(bicubic_up(E[idx]))`` -> ``[B, L, L, z]``."""
        fhat_list = self.idx_list_to_fhat_list(idx_list)
        return fhat_list[-1]

    def idx_list_to_fhat_list(self, idx_list: Sequence[jax.Array]) -> list[jax.Array]:
        """Cumulative ``f_hat`` ``[B, L, L, z]`` after each given scale (prefixes allowed)."""
        c = self.config
        if not 1 <= len(idx_list) <= c.num_scales:
            raise ValueError(f"expected 1..{c.num_scales} scales, got {len(idx_list)}")
        f_hat = None
        out = []
        for si, idx in enumerate(idx_list):
            h = self.phi(self._to_latent(self.embed_scale(idx), si), si)
            f_hat = h if f_hat is None else f_hat + h
            out.append(f_hat)
        return out

    def idx_list_to_var_input(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """Teacher-forcing inputs (VAR ``idxBl_to_var_input``).

        Args:
          idx_list: int ``[B, pn*pn]`` per scale (at least the first ``num_scales - 1``).
        Returns:
          ``[B, sum(pn^2 for pn in patch_nums[1:]), z]`` fp32: for each scale k+1, the
          cumulative ``f_hat`` after scale k area-resized to ``pn_{k+1}``, row-major.
        """
        c = self.config
        if len(idx_list) < c.num_scales - 1:
            raise ValueError(f"need {c.num_scales - 1} scales, got {len(idx_list)}")
        b = idx_list[0].shape[0]
        f_hat = jnp.zeros((b, c.latent_size, c.latent_size, c.z_channels), jnp.float32)
        nxt = []
        for si in range(c.num_scales - 1):
            h = self._to_latent(self.embed_scale(idx_list[si]), si)
            f_hat = f_hat + self.phi(h, si)
            pn = c.patch_nums[si + 1]
            nxt.append(resize_area(f_hat, (pn, pn)).reshape(b, pn * pn, c.z_channels))
        return jnp.concatenate(nxt, axis=1)

    def next_autoregressive_input(
        self, si: int, f_hat: jax.Array, h: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """VAR ``get_next_autoregressive_input`` (functional: returns the new f_hat).

        Args:
          si: current scale (Python int).
          f_hat: ``[B, L, L, z]`` accumulated so far.
          h: ``[B, pn_si, pn_si, z]`` embedding of the tokens sampled at scale ``si``.
        Returns:
          ``(f_hat + Phi(bicubic_up(h)), next)`` where ``next`` is the new f_hat
          area-resized to ``[B, pn_{si+1}, pn_{si+1}, z]``, or the new f_hat itself at the
          last scale.
        """
        c = self.config
        f_hat = f_hat.astype(jnp.float32) + self.phi(self._to_latent(h.astype(jnp.float32), si), si)
        if si == c.num_scales - 1:
            return f_hat, f_hat
        pn = c.patch_nums[si + 1]
        return f_hat, resize_area(f_hat, (pn, pn))


# --------------------------------------------------------------------------------------
# Full model
# --------------------------------------------------------------------------------------


class VQVAE(nn.Module):
    """VAR's ``VQVAE`` (inference). Images are NHWC in [-1, 1].

    Use any method through ``model.apply(params, ..., method=VQVAE.<name>)``;
    ``__call__`` (full round trip) is the init path and creates every parameter.
    """

    config: VQVAEConfig = dataclasses.field(default_factory=VQVAEConfig)
    dtype: Dtype = jnp.float32  # compute dtype of the conv nets; the quantizer stays fp32

    def setup(self) -> None:
        c, dt = self.config, self.dtype
        self.encoder = Encoder(c, dtype=dt)
        self.decoder = Decoder(c, dtype=dt)
        ks = c.quant_conv_ks
        self.quant_conv = Conv2d(c.z_channels, ks, padding=ks // 2, dtype=dt)
        self.post_quant_conv = Conv2d(c.z_channels, ks, padding=ks // 2, dtype=dt)
        self.quantize = VectorQuantizer(c)

    def __call__(self, img: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """``img [B, H, W, 3]`` -> (reconstruction from all scales ``[B, H, W, 3]``, idx_list)."""
        f = self.encode_latent(img)
        idx_list, fhat_list, _ = self.quantize.quantize_latent(f)
        if self.is_initializing():
            self.quantize.apply_all_phis(fhat_list[-1])  # some Phis may be unused by the schedule
        return self.fhat_to_img(fhat_list[-1]), idx_list

    def encode_latent(self, img: jax.Array) -> jax.Array:
        """``quant_conv(encoder(img))``: ``[B, H, W, 3]`` -> ``[B, H/16, W/16, z]`` fp32."""
        return self.quant_conv(self.encoder(img)).astype(jnp.float32)

    def quantize_latent(self, f: jax.Array) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
        """See :meth:`VectorQuantizer.quantize_latent`: (idx_list, fhat_list, f_rest)."""
        return self.quantize.quantize_latent(f)

    def img_to_idx_list(self, img: jax.Array) -> list[jax.Array]:
        """VAR ``img_to_idxBl``: ``[B, H, W, 3]`` -> int32 ``[B, pn*pn]`` per scale."""
        return self.quantize.quantize_latent(self.encode_latent(img))[0]

    def img_to_reconstructed_img(
        self, img: jax.Array, last_one: bool = False
    ) -> jax.Array | list[jax.Array]:
        """Decode the cumulative f_hat of every scale (or only the last): ``[B, H, W, 3]``."""
        fhat_list = self.quantize.quantize_latent(self.encode_latent(img))[1]
        if last_one:
            return self.fhat_to_img(fhat_list[-1])
        return [self.fhat_to_img(f_hat) for f_hat in fhat_list]

    def embed_scale(self, idx: jax.Array) -> jax.Array:
        """Codebook embedding of one scale: int ``[B, pn*pn]`` -> ``[B, pn, pn, z]``."""
        return self.quantize.embed_scale(idx)

    def idx_list_to_fhat(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """All scales' ``Phi(bicubic_up(E[idx]))`` summed: ``[B, L, L, z]``."""
        return self.quantize.idx_list_to_fhat(idx_list)

    def idx_list_to_var_input(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """Teacher-forcing inputs ``[B, var_input_len, z]`` (679 x 32 at full size)."""
        return self.quantize.idx_list_to_var_input(idx_list)

    def next_autoregressive_input(
        self, si: int, f_hat: jax.Array, h: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """See :meth:`VectorQuantizer.next_autoregressive_input`."""
        return self.quantize.next_autoregressive_input(si, f_hat, h)

    def fhat_to_img(self, f_hat: jax.Array) -> jax.Array:
        """``decoder(post_quant_conv(f_hat)).clip(-1, 1)``: ``[B, L, L, z]`` -> ``[B, H, W, 3]``."""
        return jnp.clip(self.decoder(self.post_quant_conv(f_hat)), -1.0, 1.0)

    def idx_list_to_img(self, idx_list: Sequence[jax.Array]) -> jax.Array:
        """VAR ``idxBl_to_img(same_shape=True, last_one=True)``: -> ``[B, H, W, 3]`` in [-1, 1]."""
        return self.fhat_to_img(self.quantize.idx_list_to_fhat(idx_list))
