"""Scripted expert (closed-form controller on the privileged world state) and baselines.

All policies map an observation dict to an action float32[7]; the expert additionally reads
the environment's world state and goal (it is a data generator, not a learnable policy).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from builtin_task import world as W
from builtin_task.env import SimEnv
from builtin_task.tasks import Goal

Policy = Callable[[dict[str, Any]], np.ndarray]
OPEN, CLOSE = -1.0, 1.0
_ARRIVED = 1e-4  # positions closer than this count as reached (float32 action rounding)
_ALIGN_TOL = 0.01  # lateral error allowed while pushing before re-approaching
_APPROACH_GAP = 0.015  # the push approach point is this far behind contact


def _action(move: np.ndarray, grip: float) -> np.ndarray:
    """Action float32[7] moving the gripper by `move` (table units, clipped to one step)."""
    a = np.zeros(W.ACTION_DIM, np.float32)
    a[:2] = W.clip_norm(np.asarray(move, np.float64) / W.MAX_STEP)
    a[6] = grip
    return a


def _reach(world: W.World, goal: Goal) -> np.ndarray:
    # Hovering (open) gripper never touches blocks, so a straight line is always free.
    return _action(world.blocks[goal.block] - world.gripper, OPEN)


def _push(world: W.World, goal: Goal) -> np.ndarray:
    g, b = world.gripper, world.blocks[goal.block]
    to_target = world.targets[goal.target] - b
    dist = float(np.linalg.norm(to_target))
    u = to_target / max(dist, 1e-12)
    contact = b - u * W.CONTACT  # gripper centre touching the block from behind
    if world.closed and world.held < 0:
        rel = g - b
        along = -float(rel @ u)
        lateral = float(np.linalg.norm(rel + along * u))
        if lateral < _ALIGN_TOL and 0.0 < along < W.CONTACT + 0.03:
            # Aim one step past contact along u: the disc contact moves the block by exactly
            # that step; never beyond the target centre.
            return _action(contact + u * min(W.MAX_STEP, dist) - g, CLOSE)
    approach = b - u * (W.CONTACT + _APPROACH_GAP)
    if not world.closed and np.linalg.norm(approach - g) <= _ARRIVED:
        return _action(contact + u * min(W.MAX_STEP, dist) - g, CLOSE)  # close and push
    return _action(approach - g, OPEN)  # (re)approach hovering


def _pick_place(world: W.World, goal: Goal) -> np.ndarray:
    g, b, t = world.gripper, world.blocks[goal.block], world.targets[goal.target]
    if world.held == goal.block:
        if np.linalg.norm(t - b) <= _ARRIVED:
            return _action(np.zeros(2), OPEN)  # release on the square centre
        return _action(t - b, CLOSE)  # carried block keeps its offset: move it by t - b
    if world.closed:
        return _action(b - g, OPEN)  # holding something else or closed empty: let go
    if np.linalg.norm(b - g) <= _ARRIVED:
        return _action(t - b, CLOSE)  # grasp (applied before the move) and start carrying
    return _action(b - g, OPEN)


_CONTROLLERS = {"reach": _reach, "push": _push, "pick_place": _pick_place}


def expert_action(world: W.World, goal: Goal) -> np.ndarray:
    """The scripted expert's action float32[7] for a world state and goal."""
    return _CONTROLLERS[goal.task](world, goal)


def expert_policy(env: SimEnv) -> Policy:
    """Expert as a Policy: ignores the observation and reads env.world / env.goal."""
    return lambda obs: expert_action(env.world, env.goal)


def noop_policy(obs: dict[str, Any]) -> np.ndarray:
    """Baseline that never moves and keeps the gripper open."""
    a = np.zeros(W.ACTION_DIM, np.float32)
    a[6] = OPEN
    return a


def random_policy(seed: int) -> Policy:
    """Baseline with uniform random dx, dy in [-1, 1] and a random gripper sign each step."""
    rng = np.random.default_rng(seed)

    def act(obs: dict[str, Any]) -> np.ndarray:
        a = np.zeros(W.ACTION_DIM, np.float32)
        a[:2] = rng.uniform(-1.0, 1.0, size=2)
        a[6] = OPEN if rng.random() < 0.5 else CLOSE
        return a

    return act


def make_policy(name: str, env: SimEnv, seed: int = 0) -> Policy:
    """Baseline by name: "expert", "noop" or "random"."""
    if name == "expert":
        return expert_policy(env)
    if name == "noop":
        return noop_policy
    if name == "random":
        return random_policy(seed)
    raise ValueError(f"unknown policy {name!r}; expected expert, noop or random")


def rollout(
    env: SimEnv, policy: Policy, seed: int, task: str | None = None
) -> tuple[list[dict[str, Any]], list[np.ndarray], bool]:
    """Runs one episode; returns (observations o_0..o_{T-1}, actions a_0..a_{T-1}, success).

    The final observation after the last action is not returned (RLDS steps pair o_t with a_t).
    """
    obs = env.reset(seed, task)
    observations, actions = [], []
    done, success = False, False
    while not done:
        action = np.asarray(policy(obs), np.float32)
        observations.append(obs)
        actions.append(action)
        obs, _, done, info = env.step(action)
        success = info["success"]
    return observations, actions, success
