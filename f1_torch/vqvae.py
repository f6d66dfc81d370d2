"""VAR's multi-scale residual VQ-VAE (frozen tokenizer of the generation expert), NCHW, fp32.

Encoder/decoder are LDM-style conv nets (GroupNorm + SiLU + 3x3 convs, single-head spatial
attention at the lowest resolution and in the middle). The quantizer holds one codebook; at scale
`si` the residual is area-resized to pn x pn, looked up by squared-L2 argmin, bicubic-upsampled
back to the latent size, refined by a "Phi" conv and accumulated into `f_hat`
(f1_jax/models/vqvae.py; var_reference in the docs). Module names are VAR's, so the state-dict
keys are the official ones below `model.vae.`. The resizes are torch's own `F.interpolate`
`area` and `bicubic` (align_corners False), which is what VAR calls.

Code indices of one scale are [B, pn * pn], row-major (h, w); next-scale inputs are token rows
[B, n, z] in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from f1_common.model_config import VQVAEConfig, phi_index


def _norm(channels: int, c: VQVAEConfig) -> nn.GroupNorm:
    return nn.GroupNorm(c.norm_groups, channels, eps=c.norm_eps)


def area(x: torch.Tensor, size: int) -> torch.Tensor:
    """torch's `area` resize (adaptive average pooling) of [B, C, H, W] to size x size."""
    return F.interpolate(x, size=(size, size), mode="area")


def bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """torch's `bicubic` resize (a = -0.75, half-pixel, clamped) of [B, C, h, w]."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


class ResnetBlock(nn.Module):
    """`nin_shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`; the 1x1 shortcut only
    where the channel count changes."""

    def __init__(self, cin: int, cout: int, c: VQVAEConfig):
        super().__init__()
        self.norm1 = _norm(cin, c)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, c)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head attention over the H*W positions: `x + proj_out(attn(norm(x)))`, qkv one 1x1
    conv to [q | k | v], scale C^-0.5."""

    def __init__(self, channels: int, c: VQVAEConfig):
        super().__init__()
        self.norm = _norm(channels, c)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, ch, hh * ww).unbind(1)
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * ch**-0.5, dim=2)  # [B, i, j]
        out = torch.bmm(v, weights.transpose(1, 2)).view(b, ch, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a 3x3 stride-2 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: `block.{i}` (each followed by `attn.{i}` where present), a resample."""

    def __init__(self, cin, cout, blocks, use_attn, resample: str | None, c: VQVAEConfig):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, c) for i in range(blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(cout, c) for _ in range(blocks if use_attn else 0))
        if resample == "down":
            self.downsample = Downsample(cout)
        elif resample == "up":
            self.upsample = Upsample(cout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


class Mid(nn.Module):
    def __init__(self, channels: int, c: VQVAEConfig):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, c)
        self.attn_1 = AttnBlock(channels, c)
        self.block_2 = ResnetBlock(channels, channels, c)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """[B, 3, H, W] -> [B, z, H/r, W/r], r = 2^(levels - 1)."""

    def __init__(self, c: VQVAEConfig):
        super().__init__()
        chans = [c.ch * m for m in c.ch_mult]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        ins = [c.ch] + chans[:-1]
        self.down = nn.ModuleList(
            Level(ins[i], chans[i], c.num_res_blocks, i == last, None if i == last else "down", c)
            for i in range(len(chans))
        )
        self.mid = Mid(chans[-1], c)
        self.norm_out = _norm(chans[-1], c)
        self.conv_out = nn.Conv2d(chans[-1], c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """[B, z, h, w] -> [B, 3, h*r, w*r] (unclamped)."""

    def __init__(self, c: VQVAEConfig):
        super().__init__()
        chans = [c.ch * m for m in c.ch_mult]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(c.z_channels, chans[-1], 3, padding=1)
        self.mid = Mid(chans[-1], c)
        ins = chans[1:] + [chans[-1]]  # level i receives level i + 1's output (the last: mid's)
        self.up = nn.ModuleList(
            Level(ins[i], chans[i], c.num_res_blocks + 1, i == last, "up" if i else None, c)
            for i in range(len(chans))
        )
        self.norm_out = _norm(c.ch, c)
        self.conv_out = nn.Conv2d(c.ch, c.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):  # VAR runs up[L-1] ... up[0]
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """VAR's Phi: `(1 - r) h + r conv3x3(h)`."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class QuantResi(nn.Module):
    """The Phi bank: `qresi_ls.{k}` (K Phis) or `qresi` (one shared)."""

    def __init__(self, c: VQVAEConfig):
        super().__init__()
        self.config = c
        if c.num_phis == 1:
            self.qresi = Phi(c.z_channels, c.quant_resi)
        elif c.num_phis > 1:
            self.qresi_ls = nn.ModuleList(
                Phi(c.z_channels, c.quant_resi) for _ in range(c.num_phis)
            )

    def forward(self, h: torch.Tensor, si: int) -> torch.Tensor:
        c = self.config
        if c.num_phis == 0:
            return h
        if c.num_phis == 1:
            return self.qresi(h)
        return self.qresi_ls[phi_index(si, c.num_scales, c.num_phis)](h)


class VectorQuantizer(nn.Module):
    """VAR's `VectorQuantizer2` (inference parts): codebook `embedding` and `quant_resi`."""

    def __init__(self, c: VQVAEConfig):
        super().__init__()
        self.config = c
        self.embedding = nn.Embedding(c.vocab_size, c.z_channels)
        self.quant_resi = QuantResi(c)

    def embed_scale(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes of one scale [B, pn*pn] -> codebook vectors [B, z, pn, pn]."""
        b, n = idx.shape
        pn = math.isqrt(n)
        if pn * pn != n:
            raise ValueError(f"{n} codes is not a square scale")
        return self.embedding(idx).transpose(1, 2).reshape(b, -1, pn, pn)

    def lookup(self, rest: torch.Tensor) -> torch.Tensor:
        """Nearest codes of [B, z, pn, pn] -> [B, pn*pn] int64 (squared L2 as VAR: |z|^2 +
        |e|^2 - 2 z.e, first index on ties)."""
        b, z = rest.shape[:2]
        rows = rest.permute(0, 2, 3, 1).reshape(-1, z)
        codebook = self.embedding.weight
        d = rows.square().sum(1, keepdim=True) + codebook.square().sum(1)
        d = torch.addmm(d, rows, codebook.T, beta=1, alpha=-2)
        return d.argmin(dim=1).view(b, -1)

    def to_latent(self, h: torch.Tensor, si: int) -> torch.Tensor:
        """Phi(bicubic_up(h)) of scale si (no resize at the last scale): [B, z, L, L]."""
        c = self.config
        if si != c.num_scales - 1:
            h = bicubic(h, c.latent_size)
        return self.quant_resi(h, si)

    def codes(self, f: torch.Tensor) -> list[torch.Tensor]:
        """VAR `f_to_idxBl_or_fhat`: latent [B, z, L, L] -> per scale codes [B, pn*pn]."""
        c = self.config
        f_rest, out = f.float().clone(), []
        for si, pn in enumerate(c.patch_nums):
            last = si == c.num_scales - 1
            idx = self.lookup(f_rest if last else area(f_rest, pn))
            f_rest = f_rest - self.to_latent(self.embed_scale(idx), si)
            out.append(idx)
        return out

    def var_input(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """VAR `idxBl_to_var_input`: for each scale k+1 the accumulated f_hat after scale k,
        area-resized to pn_{k+1}. Codes of scales 0 .. S-2 -> [B, sum(pn^2 for pn[1:]), z]."""
        c = self.config
        b = idx_list[0].shape[0]
        f_hat = torch.zeros(
            b, c.z_channels, c.latent_size, c.latent_size, device=idx_list[0].device
        )
        inputs = []
        for si in range(c.num_scales - 1):
            f_hat = f_hat + self.to_latent(self.embed_scale(idx_list[si]), si)
            inputs.append(area(f_hat, c.patch_nums[si + 1]).flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def next_input(
        self, si: int, f_hat: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VAR `get_next_autoregressive_input` on the codes `idx` [B, pn_si^2] sampled at si.

        Returns:
          the new f_hat [B, z, L, L] and the next scale's input [B, pn_{si+1}^2, z] (at the
          last scale: f_hat's L*L rows).
        """
        c = self.config
        f_hat = f_hat + self.to_latent(self.embed_scale(idx), si)
        if si == c.num_scales - 1:
            return f_hat, f_hat.flatten(2).transpose(1, 2)
        return f_hat, area(f_hat, c.patch_nums[si + 1]).flatten(2).transpose(1, 2)


class VQVAE(nn.Module):
    """`encoder`, `decoder`, `quant_conv`, `post_quant_conv`, `quantize` (VAR's names). fp32."""

    def __init__(self, c: VQVAEConfig):
        super().__init__()
        self.config = c
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        ks = c.quant_conv_ks
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, padding=ks // 2)
        self.quantize = VectorQuantizer(c)

    def frame_codes(self, frames: torch.Tensor) -> torch.Tensor:
        """VAR `img_to_idxBl`, scales concatenated: [N, 3, H, W] in [-1, 1] -> [N, sum(pn^2)]."""
        c = self.config
        if tuple(frames.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(
                f"The VQ-VAE expects frames [N, 3, {c.image_size}, {c.image_size}], got "
                f"{tuple(frames.shape)}."
            )
        latent = self.quant_conv(self.encoder(frames.float()))
        return torch.cat(self.quantize.codes(latent), dim=1)

    def split_scales(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """[..., sum(pn^2)] -> per scale [..., pn^2]."""
        sizes = [pn * pn for pn in self.config.patch_nums]
        return list(codes.split(sizes, dim=-1))

    def history_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """Next-scale inputs rebuilt from codes: [N, sum(pn^2)] -> [N, sum(pn^2) - 1, z]."""
        return self.quantize.var_input(self.split_scales(codes))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """`decoder(post_quant_conv(f_hat)).clamp(-1, 1)`: [B, z, L, L] -> [B, 3, H, W]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1.0, 1.0)
