"""Language-conditioned tasks of the built-in simulated table: instruction templates, success
predicates and seeded layout samplers.

Tasks (all with 2-3 solid blocks, 2 hollow target squares and distractors):
  reach       "move to the {block} block"                 gripper centre over the block
  push        "push the {block} block to the {target} square"  block rests on the square
  pick_place  "put the {block} block on the {target} square"   block rests on the square
Colours are drawn without repetition among blocks and among squares (a red block and a red
square may coexist: blocks are solid, squares are outlines).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from builtin_task import world as W
from builtin_task.render import COLORS

TASK_NAMES: tuple[str, ...] = ("reach", "push", "pick_place")
TEMPLATES: dict[str, str] = {
    "reach": "move to the {block} block",
    "push": "push the {block} block to the {target} square",
    "pick_place": "put the {block} block on the {target} square",
}
REACH_TOL = W.BLOCK_HALF  # gripper centre within this distance of the block centre: over it
PLACE_TOL = 0.05  # block centre within this (per axis) of the square centre: mostly inside it
_LO, _HI = 0.18, 0.82  # sampling range of object centres (keeps push approach points on table)


@dataclasses.dataclass(frozen=True)
class Goal:
    """What an episode asks for: task name, index of the block, index of the target square."""

    task: str
    block: int
    target: int

    def instruction(self, world: W.World) -> str:
        return TEMPLATES[self.task].format(
            block=world.block_colors[self.block], target=world.target_colors[self.target]
        )


def is_success(world: W.World, goal: Goal) -> bool:
    """Success predicate of the goal in this world state."""
    block = world.blocks[goal.block]
    if goal.task == "reach":
        return bool(np.linalg.norm(world.gripper - block) <= REACH_TOL)
    if goal.task in ("push", "pick_place"):
        on_square = np.max(np.abs(block - world.targets[goal.target])) <= PLACE_TOL
        return bool(on_square and world.held != goal.block)
    raise ValueError(f"unknown task {goal.task!r}; expected one of {TASK_NAMES}")


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * ab)))


def _layout_ok(blocks: np.ndarray, targets: np.ndarray, gripper: np.ndarray, goal: Goal) -> bool:
    """Rejects layouts that are ambiguous, already solved, or block the straight push corridor."""
    n = len(blocks)
    for i in range(n):
        for j in range(i + 1, n):
            if np.linalg.norm(blocks[i] - blocks[j]) < 2 * W.BLOCK_HALF + 0.08:
                return False
        # No block starts on a square (the goal is not pre-solved, squares stay visible).
        clear = W.TARGET_HALF + W.BLOCK_HALF + 0.02
        if np.any(np.max(np.abs(targets - blocks[i]), axis=1) < clear):
            return False
        if np.linalg.norm(gripper - blocks[i]) < W.BLOCK_HALF + 0.06:
            return False
    if np.max(np.abs(targets[0] - targets[1])) < 2 * W.TARGET_HALF + 0.04:
        return False
    if goal.task == "push":
        b, t = blocks[goal.block], targets[goal.target]
        u = (t - b) / np.linalg.norm(t - b)
        start = b - u * (W.CONTACT + 0.03)  # gripper approach point behind the block
        clearance = 2 * W.BLOCK_HALF + 0.03
        for i in range(n):
            if i != goal.block and _segment_distance(blocks[i], start, t) < clearance:
                return False
    return True


def sample_layout(task: str, rng: np.random.Generator) -> tuple[W.World, Goal]:
    """A random feasible initial world and goal for `task` (deterministic given rng's state)."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    names = list(COLORS)
    for _ in range(1000):
        n_blocks = int(rng.integers(2, 4))
        block_colors = tuple(rng.permutation(names)[:n_blocks].tolist())
        target_colors = tuple(rng.permutation(names)[:2].tolist())
        blocks = rng.uniform(_LO, _HI, size=(n_blocks, 2))
        targets = rng.uniform(_LO, _HI, size=(2, 2))
        # Anywhere on the table: from a fixed home strip every block lies ahead ("up"), a policy
        # learns that prior instead of where the block is, and overshoots it in closed loop.
        gripper = rng.uniform(0.1, 0.9, size=2)
        goal = Goal(task, int(rng.integers(n_blocks)), int(rng.integers(2)))
        if _layout_ok(blocks, targets, gripper, goal):
            world = W.World(
                gripper=gripper,
                closed=False,
                held=-1,
                blocks=blocks,
                block_colors=block_colors,
                targets=targets,
                target_colors=target_colors,
            )
            return world, goal
    raise RuntimeError(f"could not sample a feasible {task} layout in 1000 tries")
