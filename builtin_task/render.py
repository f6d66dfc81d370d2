"""Rasteriser of the table-top world: a fixed top-down camera and a camera that follows the
gripper ("wrist" view). Pure NumPy; every shape is axis-aligned or a disc, drawn into the
bounding-box slice of the image only, so one 256x256 view costs well under a millisecond.
"""

from __future__ import annotations

import numpy as np

from builtin_task import world as W

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (35, 95, 215),
    "yellow": (240, 200, 20),
}
FLOOR = (55, 55, 62)
TABLE = (200, 182, 150)
TABLE_EDGE = (150, 130, 100)
FINGER = (30, 30, 34)
PALM = (95, 95, 105)
SHADOW = (120, 105, 85)
TOP_HALF_WIDTH = 0.53  # top-down view shows the table plus a thin border
WRIST_HALF_WIDTH = 0.25  # wrist view: ~2x zoom centred on the gripper


def _mix(c: tuple[int, int, int], other: tuple[int, int, int], t: float) -> tuple[int, ...]:
    return tuple(int(round((1 - t) * a + t * b)) for a, b in zip(c, other))


def _span(coords: np.ndarray, lo: float, hi: float) -> slice | None:
    """Index slice of the (monotonic) pixel-centre coordinates inside [lo, hi]."""
    idx = np.nonzero((coords >= lo) & (coords <= hi))[0]
    return slice(idx[0], idx[-1] + 1) if len(idx) else None


def _rect(img, xs, ys, cx, cy, hx, hy, color) -> None:
    cols, rows = _span(xs, cx - hx, cx + hx), _span(ys, cy - hy, cy + hy)
    if cols is not None and rows is not None:
        img[rows, cols] = color


def _disc(img, xs, ys, cx, cy, r, color) -> None:
    cols, rows = _span(xs, cx - r, cx + r), _span(ys, cy - r, cy + r)
    if cols is None or rows is None:
        return
    mask = (xs[cols][None, :] - cx) ** 2 + (ys[rows][:, None] - cy) ** 2 <= r * r
    img[rows, cols][mask] = color


def _block(img, xs, ys, pos, color, scale=1.0) -> None:
    h = W.BLOCK_HALF * scale
    _rect(img, xs, ys, pos[0], pos[1], h, h, _mix(color, (0, 0, 0), 0.35))
    _rect(img, xs, ys, pos[0], pos[1], h - 0.007, h - 0.007, color)


def render_view(
    world: W.World, center: tuple[float, float], half_width: float, size: int
) -> np.ndarray:
    """uint8 [size, size, 3] image of the square window of the table around `center`."""
    u = (np.arange(size) + 0.5) / size * 2.0 * half_width - half_width
    xs, ys = center[0] + u, center[1] - u  # image rows go down, table y goes up
    img = np.empty((size, size, 3), np.uint8)
    img[:] = FLOOR
    _rect(img, xs, ys, 0.5, 0.5, 0.5, 0.5, TABLE_EDGE)
    _rect(img, xs, ys, 0.5, 0.5, 0.49, 0.49, TABLE)
    for pos, name in zip(world.targets, world.target_colors):  # hollow squares: thick outline
        _rect(img, xs, ys, pos[0], pos[1], W.TARGET_HALF, W.TARGET_HALF, COLORS[name])
        inner = W.TARGET_HALF - 0.014
        _rect(img, xs, ys, pos[0], pos[1], inner, inner, _mix(COLORS[name], TABLE, 0.75))
    for i, (pos, name) in enumerate(zip(world.blocks, world.block_colors)):
        if i != world.held:
            _block(img, xs, ys, pos, COLORS[name])
    g = world.gripper
    if world.held >= 0:  # lifted block: drop shadow and drawn slightly larger
        pos = world.blocks[world.held]
        h = W.BLOCK_HALF
        _rect(img, xs, ys, pos[0] + 0.012, pos[1] - 0.012, h, h, SHADOW)
        _block(img, xs, ys, pos, COLORS[world.block_colors[world.held]], scale=1.15)
    # Fingers left/right of the palm; their spread shows open / closed / holding.
    spread = {W.FINGER_OPEN: 0.05, W.FINGER_HOLD: 0.104, W.FINGER_CLOSED: 0.018}[
        W.finger_width(world)
    ]
    for side in (-1.0, 1.0):
        _rect(img, xs, ys, g[0] + side * spread, g[1], 0.01, 0.035, FINGER)
    _disc(img, xs, ys, g[0], g[1], 0.022, PALM)
    _disc(img, xs, ys, g[0], g[1], 0.008, FINGER)
    return img


def camera_windows(world: W.World) -> dict[str, tuple[tuple[float, float], float]]:
    """Camera name (data schema) -> (centre, half width) of the table window it renders: the
    primary camera sees the whole table, the wrist camera a zoomed window on the gripper."""
    return {
        "primary": ((0.5, 0.5), TOP_HALF_WIDTH),
        "wrist": ((float(world.gripper[0]), float(world.gripper[1])), WRIST_HALF_WIDTH),
    }


def render_top(world: W.World, size: int = 256) -> np.ndarray:
    """Primary camera: the whole table from above, uint8 [size, size, 3]."""
    return render_view(world, *camera_windows(world)["primary"], size)


def render_wrist(world: W.World, size: int = 256) -> np.ndarray:
    """Wrist camera: a zoomed view centred on (moving with) the gripper, uint8 [size, size, 3]."""
    return render_view(world, *camera_windows(world)["wrist"], size)
