"""Temporal windows around a current step t, clamped at the episode bounds (pure NumPy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def frame_indices(t: int, length: int, offsets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices t+offset clamped to [0, length-1] and an is_pad mask for clamped ones.

    Returns (indices int32 [len(offsets)], is_pad bool [len(offsets)]).
    """
    if length <= 0:
        raise ValueError(f"episode length must be positive, got {length}")
    raw = t + np.asarray(offsets, np.int64)
    idx = np.clip(raw, 0, length - 1).astype(np.int32)
    return idx, (raw < 0) | (raw >= length)


def action_chunk(actions: np.ndarray, t: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions t..t+chunk-1 of `actions` [T, D]; steps past the end repeat the last action.

    Returns (chunk [chunk, D], is_pad bool [chunk]) with is_pad True past the episode end.
    """
    idx, is_pad = frame_indices(t, len(actions), range(chunk))
    return actions[idx], is_pad
