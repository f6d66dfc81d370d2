"""State and exact physics of the built-in 2-D table-top task (NumPy only).

The table is the unit square [0, 1]^2 (x right, y up). A gripper (a disc seen from above) moves
by the commanded planar delta; an open gripper hovers above the blocks, a closed empty gripper is
at table height and pushes blocks (disc-disc contact, resolved exactly along the centre line);
closing the gripper over a block grasps it (the block is lifted and carried rigidly), opening
releases it where it is. Blocks never rotate, so a block is fully described by its centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GRIPPER_RADIUS = 0.035  # contact radius of the closed gripper
BLOCK_HALF = 0.08  # half side of a block (also its contact radius); about one image patch
TARGET_HALF = 0.11  # half side of a target square
MAX_STEP = 0.03  # table units moved per step at |action[:2]| = 1
GRASP_RADIUS = BLOCK_HALF  # closing with the gripper centre over a block grasps it
CONTACT = GRIPPER_RADIUS + BLOCK_HALF
FINGER_OPEN, FINGER_HOLD, FINGER_CLOSED = 0.04, 0.02, 0.0  # finger joint values (LIBERO-like)
ACTION_DIM = 7
STATE_DIM = 8


@dataclasses.dataclass(frozen=True)
class World:
    """Full simulator state. Arrays are float64 and never mutated (steps return a new World).

    gripper: [2] centre; closed: gripper command state; held: index of the carried block or -1;
    blocks: [N, 2] centres; targets: [M, 2] centres of the target squares; colours name each.
    """

    gripper: np.ndarray
    closed: bool
    held: int
    blocks: np.ndarray
    block_colors: tuple[str, ...]
    targets: np.ndarray
    target_colors: tuple[str, ...]


def finger_width(world: World) -> float:
    """Finger joint value: open, closed on a block, or closed empty."""
    if not world.closed:
        return FINGER_OPEN
    return FINGER_HOLD if world.held >= 0 else FINGER_CLOSED


def proprio_state(world: World) -> np.ndarray:
    """LIBERO-like state float32[8]: x, y, z(=0), orientation(3 zeros), fingers (w, -w)."""
    w = finger_width(world)
    x, y = world.gripper
    return np.array([x, y, 0.0, 0.0, 0.0, 0.0, w, -w], np.float32)


def clip_norm(v: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """Scales v down to norm max_norm if it is longer (keeps its direction)."""
    n = float(np.linalg.norm(v))
    return v * (max_norm / n) if n > max_norm else v


def _push_out(pos: np.ndarray, centre: np.ndarray, dist: float) -> np.ndarray | None:
    """New position of `pos` moved along centre->pos to distance `dist`, or None if no overlap."""
    d = pos - centre
    n = float(np.linalg.norm(d))
    if n >= dist:
        return None
    direction = d / n if n > 1e-12 else np.array([1.0, 0.0])  # coincident centres: push +x
    return centre + direction * dist


def _resolve_contacts(
    gripper: np.ndarray, pushing: bool, blocks: np.ndarray, held: int
) -> tuple[np.ndarray, np.ndarray]:
    """Moves blocks out of the pushing gripper and out of each other; returns (gripper, blocks).

    Pushes propagate outward: a block moved by the gripper (or by a pushed block) becomes a pusher
    itself, so chains of blocks move as rigid contacts. Remaining block overlaps (e.g. a block
    dropped onto another) are separated symmetrically; blocks are then kept on the table and the
    gripper is kept out of blocks that could not move (against an edge).
    """
    blocks = blocks.copy()
    free = [i for i in range(len(blocks)) if i != held]
    pushers: list[tuple[np.ndarray, float]] = [(gripper, GRIPPER_RADIUS)] if pushing else []
    moved: set[int] = set()
    for _ in range(len(free)):
        progress = False
        for i in free:
            if i in moved:
                continue
            for centre, radius in pushers:
                new = _push_out(blocks[i], centre, radius + BLOCK_HALF)
                if new is not None:
                    blocks[i] = new
                    moved.add(i)
                    pushers.append((blocks[i], BLOCK_HALF))
                    progress = True
                    break
        if not progress:
            break
    for _ in range(2):  # symmetric separation of leftover overlaps
        for a in free:
            for b in free:
                if a < b:
                    d = blocks[b] - blocks[a]
                    n = float(np.linalg.norm(d))
                    if n < 2 * BLOCK_HALF:
                        u = d / n if n > 1e-12 else np.array([1.0, 0.0])
                        shift = 0.5 * (2 * BLOCK_HALF - n) * u
                        blocks[a] -= shift
                        blocks[b] += shift
    for i in free:
        blocks[i] = np.clip(blocks[i], BLOCK_HALF, 1.0 - BLOCK_HALF)
    if pushing:
        for i in free:
            new = _push_out(gripper, blocks[i], CONTACT)
            if new is not None:
                gripper = np.clip(new, GRIPPER_RADIUS, 1.0 - GRIPPER_RADIUS)
    return gripper, blocks


def step_world(world: World, action: np.ndarray) -> World:
    """One deterministic physics step for action float[7] (dx, dy, dz, droll, dpitch, dyaw, grip).

    Only dx, dy (scaled by MAX_STEP, clipped to unit norm) and grip (> 0 closes, <= 0 opens)
    matter. The gripper command acts first (grasp/release at the current position), then the
    gripper moves, carrying a held block, then contacts are resolved.
    """
    a = np.asarray(action, np.float64)
    if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
        raise ValueError(f"action must be a finite float[{ACTION_DIM}], got {a!r}")
    close = bool(a[6] > 0)
    held = world.held
    if not close:
        held = -1
    elif not world.closed and len(world.blocks):
        dist = np.linalg.norm(world.blocks - world.gripper, axis=1)
        nearest = int(np.argmin(dist))
        held = nearest if dist[nearest] <= GRASP_RADIUS else -1
    delta = clip_norm(a[:2]) * MAX_STEP
    gripper = np.clip(world.gripper + delta, GRIPPER_RADIUS, 1.0 - GRIPPER_RADIUS)
    blocks = world.blocks.copy()
    if held >= 0:
        blocks[held] += gripper - world.gripper  # carried rigidly, keeps its grasp offset
    gripper, blocks = _resolve_contacts(gripper, close and held < 0, blocks, held)
    return dataclasses.replace(world, gripper=gripper, closed=close, held=held, blocks=blocks)
