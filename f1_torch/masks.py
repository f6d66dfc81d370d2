"""Token layout, block attention masks and RoPE positions (f1_jax/models/{f1,masks}.py).

A token group is described by `pad` (True for real tokens) and `block_start` (1 where a new
attention block starts). Token i may attend to token j when j's block is not later than i's and
both are real: a block sees every earlier block and itself bidirectionally. The sequence is
  understanding   camera patches + instruction            block 0
  generation      SOS + history tokens (L - 1 of them)    block 0 (with understanding)
                  last history token = scale-0 query      its own block
                  next-scale inputs of scales 1 .. S-1    one block per scale
  action          state token                             its own block
                  noisy action chunk                      one block
Absent cameras and padded words are masked (pad False), not dropped, so positions
`cumsum(pad) - 1` are those of training.
"""

from __future__ import annotations

import torch


def generation_block_starts(num_cond: int, scale_lengths: tuple[int, ...]) -> torch.Tensor:
    """Block starts of the generation tokens: the num_cond + 1 prefix then scales 1 .. S-1."""
    starts = [0] * num_cond + [1]
    for length in scale_lengths[1:]:
        starts += [1] + [0] * (length - 1)
    return torch.tensor(starts, dtype=torch.int64)


def block_attention_mask(pad: torch.Tensor, block_start: torch.Tensor) -> torch.Tensor:
    """pad [B, N] bool, block_start [B, N] int -> [B, N, N] bool (query i may see key j)."""
    blocks = torch.cumsum(block_start.long(), dim=1)
    allowed = blocks[:, None, :] <= blocks[:, :, None]
    return allowed & pad[:, None, :] & pad[:, :, None]


def positions_from_pad(pad: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """RoPE positions `offset + cumsum(pad) - 1`: pad [B, N] bool, offset scalar or [B]."""
    offset = torch.as_tensor(offset, device=pad.device)
    if offset.ndim == 1:
        offset = offset[:, None]
    return offset + torch.cumsum(pad.long(), dim=1) - 1


def prefix_layout(
    und_pad: torch.Tensor, num_cond: int, scale_lengths: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Understanding + generation tokens (prefix and every predicted scale).

    Args:
      und_pad: [B, U] bool.
    Returns:
      pad [B, N] bool, attention mask [B, N, N] bool, positions [B, N] int64, with
      N = U + num_cond + sum(scale_lengths).
    """
    batch, device = und_pad.shape[0], und_pad.device
    gen_starts = generation_block_starts(num_cond, scale_lengths).to(device)
    pad = torch.cat(
        [und_pad.bool(), torch.ones(batch, gen_starts.numel(), dtype=torch.bool, device=device)], 1
    )
    starts = torch.cat(
        [torch.zeros_like(und_pad, dtype=torch.int64), gen_starts.expand(batch, -1)], dim=1
    )
    return pad, block_attention_mask(pad, starts), positions_from_pad(pad)


def suffix_layout(prefix_pad: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """State + action tokens after the cached prefix.

    Returns:
      mask [B, 1 + chunk, P + 1 + chunk] bool (every real prefix token is visible; the state is
      one block, the chunk another) and positions [B, 1 + chunk] continuing the prefix's.
    """
    batch, device = prefix_pad.shape[0], prefix_pad.device
    pad = torch.ones(batch, 1 + chunk, dtype=torch.bool, device=device)
    starts = torch.zeros(batch, 1 + chunk, dtype=torch.int64, device=device)
    starts[:, :2] = 1
    prefix_part = prefix_pad.bool()[:, None, :].expand(batch, 1 + chunk, -1)
    mask = torch.cat([prefix_part, block_attention_mask(pad, starts)], dim=2)
    return mask, positions_from_pad(pad, prefix_pad.long().sum(dim=1))
