"""The frame-code cache: each generation-camera frame of an episode is VQ-VAE-encoded once.

In closed loop the model looks at frames t-9, t-6, t-3, t; without a cache every call encodes all
four (the VQ-VAE is the largest single cost of a call at 256 px). The codes of a frame (its
multi-scale indices, sum(pn^2) per frame) are all the model needs from it: the next-scale inputs
are rebuilt from codes exactly (VAR `idxBl_to_var_input`), so actions and foresight are the same
with and without the cache. Frames are keyed by their index in the episode
(`ObservationTransform.__call__`'s "frame_index"; -1 for the blank frames of a missing camera).

Framework-neutral: both runtimes' policies hold one, with their own `encode` (a JAX program or
a torch module) and their own code arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class FrameCodeCache:
    """Codes of the current episode's frames by episode index; `clear()` at episode start.

    enabled: False encodes every frame of every window (to measure the cache's gain).
    `encoded_frames` counts the frames passed to the encoder since construction.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._codes: dict[int, Any] = {}
        self.encoded_frames = 0

    def clear(self) -> None:
        self._codes.clear()

    def snapshot(self) -> dict[int, Any]:
        """The cached codes, for `restore` (a failed request leaves the episode unchanged)."""
        return dict(self._codes)

    def restore(self, snapshot: dict[int, Any]) -> None:
        self._codes = dict(snapshot)

    def __len__(self) -> int:
        return len(self._codes)

    def codes(
        self,
        frames: np.ndarray,
        frame_index: np.ndarray | None,
        encode: Callable[[np.ndarray], Sequence[Any]],
    ) -> list[Any]:
        """Codes of a history window, encoding only frames not seen before (in one call).

        Args:
          frames: uint8 [T, h, w, 3], the window (oldest first).
          frame_index: int [T], each frame's index in the episode (equal indices: same frame);
            None: unknown, every frame is encoded.
          encode: uint8 [N, h, w, 3] -> N codes [sum(pn^2)] (an array [N, sum(pn^2)] will do).
        Returns:
          T codes [sum(pn^2)], in window order, as `encode` returned them.
        """
        if not self.enabled or frame_index is None:
            self.encoded_frames += len(frames)
            return list(encode(np.asarray(frames)))
        indices = [int(i) for i in np.asarray(frame_index).reshape(-1)]
        if len(indices) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(indices)} frame indices")
        new = {}  # index -> position of its first frame in the window, in window order
        for position, index in enumerate(indices):
            if index not in self._codes and index not in new:
                new[index] = position
        if new:
            encoded = encode(np.stack([frames[p] for p in new.values()]))
            self.encoded_frames += len(new)
            for row, index in enumerate(new):
                self._codes[index] = encoded[row]
        # Windows only move forward within an episode: older frames are never needed again.
        oldest = min(indices)
        for index in [i for i in self._codes if i < oldest]:
            del self._codes[index]
        return [self._codes[i] for i in indices]
