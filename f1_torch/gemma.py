"""The three Gemma experts and their joint attention, with a preallocated KV cache.

Each expert (understanding, generation, action) has its own norms, Q/K/V/O projections and GeGLU
MLP; in every layer the keys and values of all present experts (and of the cached tokens) form ONE
attention, whose output is split back per expert (f1_jax/models/gemma.py). Module names follow
transformers' Gemma (`layers.{i}.self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, `norm`),
so an expert's state-dict keys are the official ones below `...model.`.

Two attention implementations compute the same thing: "eager" (explicit fp32 logits and softmax,
the reference the parity tests pin to f1_jax) and "sdpa" (torch's fused
`scaled_dot_product_attention` with the block mask as an additive bias; its kernels keep the
softmax in fp32 for bf16 / fp16 inputs). Two RoPE angle rules: "reciprocal" (positions times
the fp32 reciprocal of the timescale: what f1_jax computes on CPUs, and transformers' Gemma) and
"divide" (positions divided by the timescale: the original F1 code, `rad = pos / timescale`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from f1_common.model_config import RMS_NORM_EPS, ROPE_BASE, ExpertConfig
from f1_torch.precision import stream_dtype

# The fp32 masking constant of the JAX model (and openpi): a masked logit is this value, not -inf,
# so a row without any visible key (a padding token) gets a uniform softmax instead of NaNs.
MASK_VALUE = -2.3819763e38
# fp16 cannot hold MASK_VALUE; half its most negative number stays finite when a logit is added.
MASK_VALUE_FP16 = -32752.0
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
ROPE_RULES = ("reciprocal", "divide")


class RMSNorm(nn.Module):
    """Gemma RMSNorm `x * rsqrt(mean(x^2) + eps) * (1 + weight)`, in fp32 (weight fp32)."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D] in x's dtype."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def rope_inverse_timescale(head_dim: int, base: float) -> torch.Tensor:
    """fp32 [head_dim / 2]: 1 / base^(2j / head_dim).

    The timescale is the correctly rounded fp32 power (what XLA computes) and positions are
    multiplied by its fp32 reciprocal, as transformers' Gemma does and as XLA's CPU division does.
    """
    exponent = (np.float32(2.0 / head_dim) * np.arange(head_dim // 2, dtype=np.float32)).astype(
        np.float64
    )
    timescale = (base**exponent).astype(np.float32)
    return torch.from_numpy(np.float32(1.0) / timescale)


def rope_timescale(head_dim: int, base: float) -> torch.Tensor:
    """fp32 [head_dim / 2]: `base ** ((2 / head_dim) * arange(head_dim / 2))` computed as the
    original F1 code computes it (torch fp32 arithmetic)."""
    # On the CPU explicitly: the loader builds modules under a meta-device default.
    exponents = (2.0 / head_dim) * torch.arange(head_dim // 2, dtype=torch.float32, device="cpu")
    return base**exponents


def rope_table(head_dim: int, base: float, rule: str) -> torch.Tensor:
    """What `rope_angles` combines positions with: the inverse timescale ("reciprocal") or the
    timescale ("divide"). fp32 [head_dim / 2]."""
    if rule not in ROPE_RULES:
        raise ValueError(f"Unknown RoPE rule {rule!r}; valid: {ROPE_RULES}")
    if rule == "divide":
        return rope_timescale(head_dim, base)
    return rope_inverse_timescale(head_dim, base)


def rope_angles(
    positions: torch.Tensor, table: torch.Tensor, rule: str = "reciprocal"
) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos of `position / timescale`: positions [B, T] int -> two fp32 [B, T, 1, H/2].

    rule "reciprocal": `position * table` (table = `rope_inverse_timescale`); "divide":
    `position / table` (table = `rope_timescale`), the original's fp32 division."""
    pos = positions.float()[..., None, None]
    table = table.to(positions.device)
    radians = pos / table if rule == "divide" else pos * table
    return torch.sin(radians), torch.cos(radians)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half) in fp32: x [B, T, heads, H] -> same shape, x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """bool [B, T, S] -> fp32 [B, 1, 1, T, S]: 0 where visible, MASK_VALUE where not.

    Adding it equals JAX's `where(mask, logits, MASK_VALUE)` bit for bit: a logit is below the
    spacing of fp32 numbers near MASK_VALUE (2^104), so the sum rounds to MASK_VALUE exactly.
    """
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, zero, MASK_VALUE)[:, None, None]


def sdpa_mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, T, S] -> [B, 1, T, S] in `dtype` (the queries'): 0 where visible, a large
    negative finite value where not, so a row without any visible key (a padding token) stays
    finite, as in the eager path."""
    value = MASK_VALUE_FP16 if dtype == torch.float16 else MASK_VALUE
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.tensor(value, dtype=dtype, device=mask.device))[:, None]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """`joint_attention` through torch's fused kernel (grouped-query, additive mask).

    Args:
      q: [B, T, N, H] rotated queries; k, v: [B, K, S, H] (N a multiple of K), q's dtype.
      bias: [B, 1, T, S] from `sdpa_mask_bias`.
    Returns:
      [B, T, N, H] in v's dtype.
    """
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=bias, enable_gqa=q.shape[2] != k.shape[1]
    )
    return out.transpose(1, 2)


def joint_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Grouped-query softmax attention; logits and softmax in fp32, probabilities cast to v's
    dtype for the value matmul (as the JAX model does).

    Args:
      q: [B, T, N, H] rotated queries; k, v: [B, K, S, H] (N a multiple of K).
      bias: [B, 1, 1, T, S] from `mask_bias`.
    Returns:
      [B, T, N, H] in v's dtype.
    """
    batch, num_q, num_heads, head_dim = q.shape
    num_kv, num_keys = k.shape[1], k.shape[2]
    groups = num_heads // num_kv
    # [B, K, G*T, H] x [B, K, H, S]: one batched matmul per KV head, its group's queries stacked.
    qg = q.reshape(batch, num_q, num_kv, groups, head_dim).permute(0, 2, 3, 1, 4)
    qg = qg.reshape(batch, num_kv, groups * num_q, head_dim)
    # bf16 products are exact in fp32: upcasting gives the fp32-accumulated logits of JAX's
    # `preferred_element_type=float32`.
    logits = torch.matmul(qg.float(), k.float().transpose(-1, -2)) * head_dim**-0.5
    logits = logits.view(batch, num_kv, groups, num_q, num_keys) + bias
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    out = torch.matmul(probs.view(batch, num_kv, groups * num_q, num_keys), v)  # [B, K, G*T, H]
    out = out.view(batch, num_kv, groups, num_q, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(batch, num_q, num_heads, head_dim)


class Attention(nn.Module):
    """Gemma's q/k/v/o projections (no biases); the attention itself is joint (see ExpertStack)."""

    def __init__(self, c: ExpertConfig, dtype: torch.dtype):
        super().__init__()
        self.q_proj = nn.Linear(c.width, c.num_heads * c.head_dim, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(c.width, c.num_kv_heads * c.head_dim, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(c.width, c.num_kv_heads * c.head_dim, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.width, bias=False, dtype=dtype)


class MLP(nn.Module):
    """GeGLU: `down(gelu_tanh(gate(x)) * up(x))`."""

    def __init__(self, c: ExpertConfig, dtype: torch.dtype):
        super().__init__()
        self.gate_proj = nn.Linear(c.width, c.mlp_dim, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(c.width, c.mlp_dim, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(c.mlp_dim, c.width, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class ExpertLayer(nn.Module):
    """One expert's weights in one layer: what runs before and after the joint attention."""

    def __init__(self, c: ExpertConfig, dtype: torch.dtype):
        super().__init__()
        self.config = c
        self.dtype = dtype
        self.input_layernorm = RMSNorm(c.width, RMS_NORM_EPS)
        self.self_attn = Attention(c, dtype)
        self.post_attention_layernorm = RMSNorm(c.width, RMS_NORM_EPS)
        self.mlp = MLP(c, dtype)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, T, D] -> q [B, T, N, H], k and v [B, T, K, H] (before RoPE)."""
        c, (batch, length) = self.config, x.shape[:2]
        h = self.input_layernorm(x).to(self.dtype)
        q = self.self_attn.q_proj(h).view(batch, length, c.num_heads, c.head_dim)
        k = self.self_attn.k_proj(h).view(batch, length, c.num_kv_heads, c.head_dim)
        v = self.self_attn.v_proj(h).view(batch, length, c.num_kv_heads, c.head_dim)
        return q, k, v

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Output projection + residual, then the MLP + residual. [B, T, D], [B, T, N, H]."""
        x = x + self.self_attn.o_proj(attended.flatten(2)).to(x.dtype)
        return x + self.mlp(self.post_attention_layernorm(x).to(self.dtype)).to(x.dtype)


class GemmaExpert(nn.Module):
    """`layers.{i}` and the final `norm` of one expert (the official `...model.` subtree)."""

    def __init__(self, c: ExpertConfig, dtype: torch.dtype):
        super().__init__()
        self.layers = nn.ModuleList(ExpertLayer(c, dtype) for _ in range(c.depth))
        self.norm = RMSNorm(c.width, RMS_NORM_EPS)


class KVCache:
    """Keys and values of every layer, preallocated [depth, B, K, capacity, H].

    Tokens [0, length) are committed. A pass writes its tokens' keys and values right after them;
    `commit=True` keeps them (the prefix and each foresight scale), `commit=False` leaves `length`
    unchanged so the next pass overwrites them (the denoising steps read the prefix, never grow it).
    """

    def __init__(self, c: ExpertConfig, batch: int, capacity: int, dtype, device):
        shape = (c.depth, batch, c.num_kv_heads, capacity, c.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]


@dataclasses.dataclass(frozen=True)
class _Group:
    """Where one expert's tokens sit among the new tokens, and which outputs are wanted."""

    index: int
    start: int
    length: int
    keep: slice | None


class ExpertStack(nn.Module):
    """The multi-expert transformer: `depth` joint-attention layers, a final norm per expert.

    Submodules `und`, `gen`, `act` (GemmaExpert) hold the official keys of
    `paligemma.language_model.model.`, `gemma_wm_expert.model.` and `gemma_expert.model.`.
    """

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        dtype: torch.dtype,
        attention: str = "eager",
        rope: str = "reciprocal",
    ):
        super().__init__()
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"Unknown attention {attention!r}; valid: {ATTENTION_IMPLEMENTATIONS}")
        self.configs = tuple(experts)
        self.dtype = dtype
        self.stream_dtype = stream_dtype(dtype)
        self.attention = attention
        self.rope = rope
        self.und, self.gen, self.act = (GemmaExpert(c, dtype) for c in experts)
        first = self.configs[0]
        # Not a buffer: the loader builds modules on the meta device and fills only the weights.
        self._rope_table = rope_table(first.head_dim, ROPE_BASE, rope)

    @property
    def experts(self) -> tuple[GemmaExpert, GemmaExpert, GemmaExpert]:
        return (self.und, self.gen, self.act)

    def new_cache(self, batch: int, capacity: int, device) -> KVCache:
        return KVCache(self.configs[0], batch, capacity, self.dtype, device)

    def forward(
        self,
        xs: Sequence[torch.Tensor | None],
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        commit: bool,
        keep: Sequence[slice | None] | None = None,
    ) -> list[torch.Tensor | None]:
        """Runs all layers over the new tokens of the present experts, attending to the cache.

        Args:
          xs: per expert [B, T_e, D_e] (any float dtype) or None; T = sum of T_e new tokens.
          positions: [B, T] int RoPE positions of the new tokens.
          mask: [B, T, cache.length + T] bool.
          cache: receives the new tokens' keys/values after its `length` committed ones.
          commit: keep them (advance `cache.length`).
          keep: per expert, the rows of its output wanted (None: not wanted). Default: all rows
            of the present experts. Rows nobody reads are skipped in the last layer; the cache
            is unaffected (it holds every layer's keys/values of every new token).
        Returns:
          per expert the final-normed outputs of the kept rows [B, T_kept, D_e] in the residual
          stream's dtype (the compute dtype; fp32 under fp16), or None.
        """
        groups = self._groups(xs, keep)
        num_new = sum(g.length for g in groups)
        start, end = cache.length, cache.length + num_new
        if end > cache.capacity or tuple(mask.shape[1:]) != (num_new, end):
            raise ValueError(
                f"{num_new} new tokens after {start} cached (capacity {cache.capacity}) need a "
                f"mask [B, {num_new}, {end}], got {tuple(mask.shape)}."
            )
        hs = [None if x is None else x.to(self.stream_dtype) for x in xs]
        sin, cos = rope_angles(positions, self._rope_table, self.rope)
        sdpa = self.attention == "sdpa"
        bias = sdpa_mask_bias(mask, self.dtype) if sdpa else mask_bias(mask)
        attend = sdpa_attention if sdpa else joint_attention
        depth = self.configs[0].depth
        for i in range(depth):
            layers = [self.experts[g.index].layers[i] for g in groups]
            projected = [layer.qkv(hs[g.index]) for layer, g in zip(layers, groups)]
            k = torch.cat([p[1] for p in projected], dim=1)
            v = torch.cat([p[2] for p in projected], dim=1)
            cache.keys[i, :, :, start:end] = apply_rope(k, sin, cos).transpose(1, 2)
            cache.values[i, :, :, start:end] = v.transpose(1, 2)
            # In the last layer only the kept rows need queries and the rest of the layer.
            rows = [self._rows(g, i == depth - 1) for g in groups]
            if all(r is None for r in rows):
                hs = [None] * len(hs)
                break
            # (queries of the computed rows, the rows' span among all new tokens)
            picks = [
                (p[0][:, r], self._span(g, r))
                for p, g, r in zip(projected, groups, rows)
                if r is not None
            ]
            q = torch.cat([apply_rope(q_, sin[:, sp], cos[:, sp]) for q_, sp in picks], dim=1)
            q_bias = torch.cat([bias[..., sp, :] for _, sp in picks], dim=-2)
            attended = attend(q, cache.keys[i, :, :, :end], cache.values[i, :, :, :end], q_bias)
            offset = 0
            for layer, g, r in zip(layers, groups, rows):
                if r is None:
                    hs[g.index] = None
                    continue
                x = hs[g.index][:, r]
                n = x.shape[1]
                hs[g.index] = layer.finish(x, attended[:, offset : offset + n])
                offset += n
        if commit:
            cache.length = end
        outs: list[torch.Tensor | None] = [None, None, None]
        for g in groups:
            if hs[g.index] is not None:
                outs[g.index] = self.experts[g.index].norm(hs[g.index])
        return outs

    def _groups(self, xs, keep) -> list[_Group]:
        if len(xs) != 3:
            raise ValueError(f"Give one token group per expert (und, gen, act), got {len(xs)}.")
        groups, start = [], 0
        for index, (x, c) in enumerate(zip(xs, self.configs)):
            if x is None:
                continue
            if x.ndim != 3 or x.shape[2] != c.width:
                raise ValueError(
                    f"Expert {('und', 'gen', 'act')[index]} expects [B, T, {c.width}], got "
                    f"{tuple(x.shape)}."
                )
            rows = slice(None) if keep is None else keep[index]
            groups.append(_Group(index, start, x.shape[1], rows))
            start += x.shape[1]
        if not groups:
            raise ValueError("Every expert input is None.")
        return groups

    @staticmethod
    def _rows(group: _Group, last: bool) -> slice | None:
        """Rows of the group's tokens to compute in a layer: all but in the last layer."""
        return group.keep if last else slice(None)

    @staticmethod
    def _span(group: _Group, rows: slice | None) -> slice:
        """Positions of `rows` of the group among all new tokens."""
        start, stop, _ = (rows or slice(0, 0)).indices(group.length)
        return slice(group.start + start, group.start + stop)
