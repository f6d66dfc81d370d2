"""SigLIP vision tower (no pooling head), as PaliGemma uses it, and its projector.

Image [B, 3, H, W] in [-1, 1] -> patch tokens [B, (H/p)(W/p), out_width]. Pre-LN encoder layers
with tanh-GELU MLPs, then `post_layernorm`; the PaliGemma projector is a separate Linear (see
model.py). Module names follow transformers' `SiglipVisionModel.vision_model`, so the state-dict
keys are the official ones below `vision_tower.vision_model.`. The patch and position embeddings
and every LayerNorm run in fp32; the projections in the compute dtype (f1_jax/models/siglip.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from f1_common.model_config import SiglipConfig
from f1_torch.precision import stream_dtype


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 on any input dtype (fp32 parameters), returning fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


class SiglipAttention(nn.Module):
    """Bidirectional multi-head self-attention with biased q/k/v/out projections."""

    def __init__(self, c: SiglipConfig, dtype: torch.dtype, attention: str = "eager"):
        super().__init__()
        self.num_heads = c.num_heads
        self.attention = attention
        self.q_proj = nn.Linear(c.width, c.width, dtype=dtype)
        self.k_proj = nn.Linear(c.width, c.width, dtype=dtype)
        self.v_proj = nn.Linear(c.width, c.width, dtype=dtype)
        self.out_proj = nn.Linear(c.width, c.width, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, W] (compute dtype) -> [B, T, W]."""
        batch, length, width = x.shape
        head_dim = width // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, W] -> [B, N, T, Hd]
            return t.view(batch, length, self.num_heads, head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # fp32 logits and softmax (bf16 products are exact in fp32), probabilities in v's
            # dtype.
            logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * head_dim**-0.5
            probs = torch.softmax(logits, dim=-1).to(v.dtype)
            out = torch.matmul(probs, v)
        out = out.transpose(1, 2).reshape(batch, length, width)
        return self.out_proj(out)


class SiglipMLP(nn.Module):
    def __init__(self, c: SiglipConfig, dtype: torch.dtype):
        super().__init__()
        self.fc1 = nn.Linear(c.width, c.mlp_dim, dtype=dtype)
        self.fc2 = nn.Linear(c.mlp_dim, c.width, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    """Pre-LN: `x += attn(ln1(x)); x += mlp(ln2(x))`, the stream in the compute dtype (fp32
    under fp16, see precision.py)."""

    def __init__(self, c: SiglipConfig, dtype: torch.dtype, attention: str = "eager"):
        super().__init__()
        self.dtype = dtype
        self.layer_norm1 = LayerNorm32(c.width, eps=c.eps)
        self.self_attn = SiglipAttention(c, dtype, attention)
        self.layer_norm2 = LayerNorm32(c.width, eps=c.eps)
        self.mlp = SiglipMLP(c, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x).to(self.dtype)).to(x.dtype)
        return x + self.mlp(self.layer_norm2(x).to(self.dtype)).to(x.dtype)


class SiglipEmbeddings(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(c.num_patches, c.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> fp32 [B, P, W] (row-major patches)."""
        patches = self.patch_embedding(images.float()).flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight[None]


class SiglipEncoder(nn.Module):
    def __init__(self, c: SiglipConfig, dtype: torch.dtype, attention: str = "eager"):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(c, dtype, attention) for _ in range(c.depth))


class SiglipVision(nn.Module):
    """The official `vision_tower.vision_model` subtree."""

    def __init__(self, c: SiglipConfig, dtype: torch.dtype, attention: str = "eager"):
        super().__init__()
        self.config = c
        self.dtype = dtype
        self.embeddings = SiglipEmbeddings(c)
        self.encoder = SiglipEncoder(c, dtype, attention)
        self.post_layernorm = LayerNorm32(c.width, eps=c.eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> [B, P, width] in the compute dtype (before the projector)."""
        c = self.config
        if tuple(images.shape[1:]) != (3, c.image_size, c.image_size):
            raise ValueError(
                f"SigLIP expects images [B, 3, {c.image_size}, {c.image_size}], got "
                f"{tuple(images.shape)}."
            )
        x = self.embeddings(images).to(stream_dtype(self.dtype))
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x).to(self.dtype)
