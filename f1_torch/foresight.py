"""The generation expert's inputs and outputs, and VAR's top-k / top-p sampling rule.

The generation expert never sees code indices: it sees continuous VQ-VAE next-scale inputs
[.., z] embedded by one Linear `wm_embeddings` (f1_jax/models/foresight.py). With L = sum(pn^2)
output tokens per frame, the generation prefix is
  index 0          SOS (`wm_sos_token_embs`)
  index 1 .. L-1   the temporally down-sampled history tokens; the last one also carries the
                   position + level embedding of output token 0, so its output is the scale-0 query.
Output token j >= 1 is predicted from the next-scale input placed after the prefix, which carries
the position + level embedding of output token j. Everything here is fp32, as in the original.
Parameter names are the official ones below `model.`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from f1_common.model_config import F1Config, level_ids


class TemporalConv(nn.Module):
    """`conv`: Conv1d(z, z, k, stride) over the history axis, per token position."""

    def __init__(self, z: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(z, z, kernel, stride=stride)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """[B, T, P, z] (oldest first) -> [B, P, z] (exactly one output step)."""
        b, t, p, z = history.shape
        per_token = history.permute(0, 2, 3, 1).reshape(b * p, z, t)
        out = self.conv(per_token)
        if out.shape[-1] != 1:
            raise ValueError(f"The temporal conv must reduce {t} frames to one step.")
        return out.view(b, p, z)


class ForesightIO(nn.Module):
    """Embeds history / next-scale inputs for the generation expert; reads out code logits."""

    def __init__(self, config: F1Config):
        super().__init__()
        fc, vq = config.foresight, config.vqvae
        width, z, tokens = fc.width, vq.z_channels, vq.num_tokens
        self.history_frames = fc.history_frames
        self.temporal_conv = TemporalConv(z, fc.temporal_kernel, fc.temporal_stride)
        self.wm_embeddings = nn.Linear(z, width)
        self.wm_hist_pos_embs = nn.Parameter(torch.zeros(1, tokens - 1, z))
        self.wm_sos_token_embs = nn.Parameter(torch.zeros(1, 1, width))
        self.wm_cond_pos_embs = nn.Parameter(torch.zeros(1, tokens, width))
        self.wm_output_position_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.lvl_embed = nn.Embedding(vq.num_scales, width)
        self.wm_out_layer_norm = nn.LayerNorm(width, eps=1e-5)
        self.wm_out_proj = nn.Linear(width, vq.vocab_size)
        # A buffer of the original used only by stage-1 training; loaded so the export is fully
        # accounted for.
        self.register_buffer("mask_embedding", torch.zeros(1, 1, z))
        # Not a buffer: the loader builds modules on the meta device and fills only the weights.
        self._levels = torch.from_numpy(level_ids(vq.patch_nums).astype(np.int64))

    def _pos_lvl(self, start: int, stop: int) -> torch.Tensor:
        """Position + level embeddings of output tokens start..stop-1: [1, stop - start, W]."""
        lvl = self.lvl_embed(self._levels[start:stop].to(self.lvl_embed.weight.device))
        return self.wm_output_position_embedding[:, start:stop] + lvl[None]

    def embed_history(self, history: torch.Tensor) -> torch.Tensor:
        """History frames' next-scale inputs [B, T, L-1, z] -> generation prefix [B, L, W]."""
        expected = (
            self.history_frames,
            self.wm_hist_pos_embs.shape[1],
            self.wm_hist_pos_embs.shape[2],
        )
        if history.ndim != 4 or tuple(history.shape[1:]) != expected:
            raise ValueError(f"history must be [B, {expected}], got {tuple(history.shape)}.")
        cond = self.wm_embeddings(self.temporal_conv(history.float()) + self.wm_hist_pos_embs)
        sos = self.wm_sos_token_embs.expand(cond.shape[0], 1, -1)
        prefix = torch.cat([sos, cond], dim=1) + self.wm_cond_pos_embs
        last = prefix[:, -1:] + self._pos_lvl(0, 1)  # the scale-0 query
        return torch.cat([prefix[:, :-1], last], dim=1)

    def embed_scale_inputs(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Next-scale inputs [B, n, z] of output tokens start..start+n-1 -> [B, n, W]."""
        n = x.shape[1]
        return self.wm_embeddings(x.float()) + self._pos_lvl(start, start + n)

    def logits(self, gen_out: torch.Tensor) -> torch.Tensor:
        """Generation expert outputs [B, n, W] -> fp32 code logits [B, n, V]."""
        return self.wm_out_proj(self.wm_out_layer_norm(gen_out.float()))


def top_k_top_p_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """VAR's `sample_with_top_k_top_p_` filter: removed logits become -inf. [.., V] -> [.., V].

    top-k (0 < top_k < V): remove logits below the k-th largest (ties with it are kept). top-p
    (top_p > 0), on the result: sorted ascending, remove the tokens whose cumulative softmax is
    <= 1 - top_p, never the largest.
    """
    logits = logits.float()
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, order = torch.sort(logits, dim=-1, stable=True)
        remove = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1) <= 1.0 - top_p
        remove[..., -1] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -torch.inf)
    return logits


def sample_codes(
    logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One code per token by VAR's rule at temperature 1: [B, n, V] -> [B, n] int64.

    top_k == 1 is exactly greedy (argmax; VAR would draw among exact ties at the maximum).
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    probs = F.softmax(top_k_top_p_filter(logits, top_k, top_p), dim=-1)
    flat = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(logits.shape[:-1])
