"""Per-patch object labels of the simulated cameras, from the privileged world state.

What a patch of a camera image shows follows from the camera windows of `render` and the
object rectangles of `world`; `patch_labels` marks the patches covered by the instructed block
and the instructed square (the debug recipe's grounding pretraining learns them).
"""

from __future__ import annotations

import numpy as np

from builtin_task import render
from builtin_task import world as W
from builtin_task.tasks import Goal

BACKGROUND, NAMED_BLOCK, NAMED_SQUARE = 0, 1, 2
NUM_CLASSES = 3
MIN_COVER = 0.15  # a patch shows an object when the object covers this fraction of it


def _cover(edges_x: np.ndarray, edges_y: np.ndarray, centre: np.ndarray, half: float) -> np.ndarray:
    """float [rows, cols]: fraction of each patch covered by the axis-aligned square."""
    ox = np.clip(
        np.minimum(edges_x[1:], centre[0] + half) - np.maximum(edges_x[:-1], centre[0] - half),
        0.0,
        None,
    )
    # Rows go down the image while table y goes up: edges_y is decreasing.
    oy = np.clip(
        np.minimum(edges_y[:-1], centre[1] + half) - np.maximum(edges_y[1:], centre[1] - half),
        0.0,
        None,
    )
    area = (edges_x[1] - edges_x[0]) * (edges_y[0] - edges_y[1])
    return oy[:, None] * ox[None, :] / area


def view_patch_labels(
    world: W.World, goal: Goal, centre: tuple[float, float], half_width: float, side: int
) -> np.ndarray:
    """int32 [side * side] (row-major patches of one view): NAMED_BLOCK where the instructed
    block covers MIN_COVER of the patch, else NAMED_SQUARE where the instructed square does
    (push and pick_place only), else BACKGROUND."""
    edges = np.linspace(-half_width, half_width, side + 1)
    edges_x, edges_y = centre[0] + edges, centre[1] - edges
    labels = np.full((side, side), BACKGROUND, np.int32)
    if goal.task != "reach":
        square = _cover(edges_x, edges_y, world.targets[goal.target], W.TARGET_HALF)
        labels[square >= MIN_COVER] = NAMED_SQUARE
    block = _cover(edges_x, edges_y, world.blocks[goal.block], W.BLOCK_HALF)
    labels[block >= MIN_COVER] = NAMED_BLOCK
    return labels.reshape(-1)


def patch_labels(world: W.World, goal: Goal, cameras: tuple[str, ...], side: int) -> np.ndarray:
    """int32 [len(cameras) * side * side]: `view_patch_labels` per camera, in `cameras` order;
    cameras the simulator does not render are all BACKGROUND."""
    windows = render.camera_windows(world)
    return np.concatenate(
        [
            view_patch_labels(world, goal, *windows[c], side)
            if c in windows
            else np.full(side * side, BACKGROUND, np.int32)
            for c in cameras
        ]
    )
