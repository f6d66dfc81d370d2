"""The built-in simulated task: a gym-like environment over the 2-D table world.

    env = SimEnv()
    obs = env.reset(seed=3)                 # task = TASK_NAMES[seed % 3] unless given
    obs, reward, done, info = env.step(action)   # action float32[7], info["success"]

Observations follow the LIBERO layout, so the same data pipeline and policy code serve both:
image / wrist_image uint8 [S, S, 3], state float32[8] (x, y, z=0, 3 zero orientation dims,
fingers (w, -w)), instruction str. Actions: float32[7] = (dx, dy, dz, droll, dpitch, dyaw,
gripper) with gripper -1 open / +1 close; only dx, dy (in units of MAX_STEP, clipped to unit
norm) and the gripper sign matter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from builtin_task import render, tasks
from builtin_task import world as W

MAX_STEPS = 80
# Seeds used for evaluation start here; the writer's training seeds stay far below (see writer).
EVAL_SEED_BASE = 1_000_000_000


def eval_seeds(num_episodes: int, start: int = EVAL_SEED_BASE) -> list[int]:
    """Held-out evaluation seeds (consecutive, so tasks cycle evenly via seed % 3)."""
    return list(range(start, start + num_episodes))


def task_for_seed(seed: int) -> str:
    """Default task of a seed: tasks cycle with the seed so any seed range is balanced."""
    return tasks.TASK_NAMES[seed % len(tasks.TASK_NAMES)]


class SimEnv:
    """Seeded, deterministic table-top environment (see module docstring for the spaces)."""

    def __init__(
        self,
        task: str | None = None,
        image_size: int = 256,
        max_steps: int = MAX_STEPS,
        render_images: bool = True,
    ):
        if task is not None and task not in tasks.TASK_NAMES:
            raise ValueError(f"unknown task {task!r}; expected one of {tasks.TASK_NAMES}")
        self.task = task
        self.image_size = image_size
        self.max_steps = max_steps
        self.render_images = render_images  # False: state-only observations (fast tests)
        self.world: W.World | None = None
        self.goal: tasks.Goal | None = None
        self.steps = 0
        self.done = True

    @property
    def instruction(self) -> str:
        return self.goal.instruction(self.world)

    def reset(self, seed: int, task: str | None = None) -> dict[str, Any]:
        """Starts an episode whose layout is a pure function of (seed, task)."""
        task = task or self.task or task_for_seed(seed)
        self.world, self.goal = tasks.sample_layout(task, np.random.default_rng(seed))
        self.steps = 0
        self.done = False
        return self.observe()

    def observe(self) -> dict[str, Any]:
        """Observation of the current state (images only when render_images)."""
        obs: dict[str, Any] = {
            "state": W.proprio_state(self.world),
            "instruction": self.instruction,
        }
        if self.render_images:
            obs["image"] = render.render_top(self.world, self.image_size)
            obs["wrist_image"] = render.render_wrist(self.world, self.image_size)
        return obs

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Applies action float[7]; reward 1 on success; done on success or after max_steps."""
        if self.done:
            raise RuntimeError("episode is over: call reset(seed) first")
        self.world = W.step_world(self.world, np.asarray(action, np.float32))
        self.steps += 1
        success = tasks.is_success(self.world, self.goal)
        timeout = self.steps >= self.max_steps and not success
        self.done = success or timeout
        info = {"success": success, "timeout": timeout, "task": self.goal.task, "steps": self.steps}
        return self.observe(), float(success), self.done, info
