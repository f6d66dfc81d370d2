"""Token layout, block attention masks and RoPE positions, named as f1_jax/models/{f1,masks}.py.

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

from f1_common.model_config import ForesightConfig, action_block_starts, generation_block_starts


def sequence_layout(
    und_pad: torch.Tensor, foresight: ForesightConfig, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad mask and block starts of [understanding | generation | action (if chunk_size)].

    Args:
      und_pad: [B, U] bool, the understanding tokens' pad mask.
    Returns:
      pad [B, N] bool and block_start [B, N] int64, N = U + num_cond + sum(scale_lengths)
      (+ 1 + chunk_size).
    """
    batch, device = und_pad.shape[0], und_pad.device
    starts = [generation_block_starts(foresight)]
    if chunk_size is not None:
        starts.append(action_block_starts(chunk_size))
    tail = torch.cat([torch.from_numpy(s).long() for s in starts]).to(device)
    pad = torch.cat(
        [und_pad.bool(), torch.ones(batch, tail.numel(), dtype=torch.bool, device=device)], 1
    )
    block_start = torch.cat(
        [torch.zeros_like(und_pad, dtype=torch.int64), tail.expand(batch, -1)], dim=1
    )
    return pad, block_start


def block_attention_mask(pad: torch.Tensor, block_start: torch.Tensor) -> torch.Tensor:
    """pad [B, N] bool, block_start [B, N] int -> [B, N, N] bool (query i may see key j)."""
    blocks = torch.cumsum(block_start.long(), dim=1)
    allowed = blocks[:, None, :] <= blocks[:, :, None]
    return allowed & pad[:, None, :] & pad[:, :, None]


def suffix_attention_mask(
    prefix_pad: torch.Tensor, suffix_pad: torch.Tensor, suffix_block_start: torch.Tensor
) -> torch.Tensor:
    """Mask of suffix queries over [prefix keys | suffix keys]: every real prefix token is
    visible (the prefix never sees the suffix); among themselves the block rule.

    prefix_pad [B, P] bool, suffix_pad [B, S] bool, suffix_block_start [B, S] int ->
    [B, S, P + S] bool.
    """
    batch, num_suffix = suffix_pad.shape
    prefix_part = prefix_pad.bool()[:, None, :].expand(batch, num_suffix, -1)
    return torch.cat([prefix_part, block_attention_mask(suffix_pad, suffix_block_start)], dim=2)


def positions_from_pad(pad: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """RoPE positions `offset + cumsum(pad) - 1`: pad [B, N] bool, offset scalar or [B]."""
    offset = torch.as_tensor(offset, device=pad.device)
    if offset.ndim == 1:
        offset = offset[:, None]
    return offset + torch.cumsum(pad.long(), dim=1) - 1
