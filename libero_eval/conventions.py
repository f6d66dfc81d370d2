"""The community LIBERO protocol and the observation conventions of the LIBERO training sets.

Everything a policy sees or does in the simulator goes through here, so the evaluation feeds a
model exactly what `data_pipelines/sources/libero.py` fed it in training (docs/libero.md):

- cameras: agentview -> "primary", eye-in-hand -> "wrist", both rotated 180 degrees (the
  `modified_libero_rlds` builder stored the renders that way), uint8 [256, 256, 3];
- state f32[8] = end-effector position (3) + axis-angle of its quaternion (3) + the two finger
  joint positions (2): `observation/state` of the datasets;
- action f32[7] = end-effector delta (6) + gripper (-1 open, +1 close): the datasets' own
  convention, which the simulator consumes unchanged.

NumPy only: the protocol can be read (and tested) without the simulator installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines.sources import libero as libero_source

# Per-suite limits on policy steps (after the settle steps): the longest training demonstration
# plus a margin, as openpi's and OpenVLA-OFT's evaluators use (193/254/270/505/373-step demos).
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SUITES = tuple(MAX_STEPS)
SETTLE_STEPS = 10  # no-op steps at the start: objects are dropped into the scene and must settle
RESOLUTION = 256  # the training sets' render size; the checkpoint's contract resizes from it
ENV_SEED = 7  # openpi's; the fixed init states decide the layout, the seed only the rest
EPISODES_PER_TASK = 50  # every suite ships 50 fixed init states per task
# The training sets' widths, from the LIBERO source's configuration (sources/libero.py SPEC).
STATE_DIM = sum(part["dims"] for part in libero_source.SPEC["state"])  # 8
ACTION_DIM = sum(part["dims"] for part in libero_source.SPEC["action"])  # 7
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0  # the action's last dim, as in the datasets
# Zero motion with the gripper open: what the settle steps send (openpi's and OFT's dummy action).
NOOP_ACTION = np.array([0.0] * 6 + [GRIPPER_OPEN], np.float32)
# The datasets' camera keys (`image`, `wrist_image`) by standard camera name.
CAMERA_KEYS = {name: key for name, key in libero_source.SPEC["cameras"].items() if key}
RENDER_KEYS = {"primary": "agentview_image", "wrist": "robot0_eye_in_hand_image"}


def orient(frame: np.ndarray) -> np.ndarray:
    """A simulator render uint8 [H, W, 3] -> the training sets' orientation (rotated 180 deg)."""
    return np.ascontiguousarray(frame[::-1, ::-1])


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), robosuite's order -> axis * angle f32[3], angle in [0, 2pi].

    The datasets' state uses robosuite's `quat2axisangle`: the sign of w is kept (no shortest
    rotation), so angles above pi appear as they do in training.
    """
    q = np.asarray(quat, np.float64)
    w = min(max(float(q[3]), -1.0), 1.0)
    sin_half = math.sqrt(1.0 - w * w)
    if math.isclose(sin_half, 0.0):
        return np.zeros(3, np.float32)
    return (q[:3] * 2.0 * math.acos(w) / sin_half).astype(np.float32)


def libero_state(raw: Mapping[str, Any]) -> np.ndarray:
    """Simulator observation -> the datasets' state f32[8] (eef pos, axis-angle, finger qpos)."""
    state = np.concatenate(
        [
            np.asarray(raw["robot0_eef_pos"], np.float32),
            quat_to_axis_angle(raw["robot0_eef_quat"]),
            np.asarray(raw["robot0_gripper_qpos"], np.float32),
        ]
    )
    if state.shape != (STATE_DIM,):
        raise ValueError(f"LIBERO state must be [{STATE_DIM}], got {state.shape}")
    return state


def observation(raw: Mapping[str, Any], instruction: str) -> dict[str, Any]:
    """Simulator observation -> the policy's: {"primary", "wrist": uint8 [256, 256, 3] in the
    training orientation, "state": f32[8], "instruction": str} (standard camera names, which
    every f1-jax policy accepts whatever its dataset called the cameras)."""
    out: dict[str, Any] = {name: orient(raw[key]) for name, key in RENDER_KEYS.items()}
    out["state"] = libero_state(raw)
    out["instruction"] = str(instruction)
    return out


def check_actions(actions: Any) -> np.ndarray:
    """A policy's reply -> f32 [chunk, 7], or ValueError saying what is wrong."""
    a = np.asarray(actions, np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != ACTION_DIM:
        raise ValueError(
            f"the policy must return actions [chunk, {ACTION_DIM}] (eef delta 6 + gripper), got "
            f"{a.shape}: is it a LIBERO checkpoint?"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError("the policy returned non-finite actions")
    return a
