"""Writes a small LeRobot dataset with the real `lerobot` package (run as a script, in a
subprocess whose PYTHONPATH holds one lerobot version: 0.4.4 writes v3.0, 0.3.3 writes v2.1).

The frame, state, action and task values are functions of (episode, step), so the tests compute
what was written without reading lerobot's output back with lerobot.

python lerobot_writer.py ROOT CODEC LENGTHS_JSON
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np

FPS = 10
SIZE = 32  # frame side
STATE_DIM, ACTION_DIM = 8, 7
TASKS = ("pick up the red block", "open the top drawer", "")  # "" only where a test wants it
VIDEO_KEYS = ("observation.images.top", "observation.images.wrist")
IMAGE_KEY = "observation.images.side"  # stored as PNG in the parquet (v3.0 fixture only)


def scene(episode: int, t: int, camera: int) -> np.ndarray:
    """uint8 [SIZE, SIZE, 3]: smooth gradients whose brightness rises 8 levels per step, and a
    square that moves 2 px per step (compresses like a real scene; each frame is told from its
    neighbours by its brightness, which lossy codecs keep)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) * (32.0 / SIZE)
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[..., 0] = 20 + 2 * x + 8 * t
    img[..., 1] = 30 + 1.5 * y + 20 * camera + 8 * t
    img[..., 2] = 50 + 25 * episode + (x + y) + 8 * t
    side = SIZE // 4
    x0 = (2 * t + 5 * camera) % (SIZE - side)
    y0 = (3 + 4 * episode) % (SIZE - side)
    img[y0 : y0 + side, x0 : x0 + side] = (240, 200 - 40 * camera, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def state(episode: int, t: int) -> np.ndarray:
    return (100.0 * episode + t + 0.125 * np.arange(STATE_DIM)).astype(np.float32)


def action(episode: int, t: int) -> np.ndarray:
    a = (0.01 * t - 0.5 * episode + 0.25 * np.arange(ACTION_DIM)).astype(np.float32)
    a[-1] = -1.0 if (t // 4) % 2 == 0 else 1.0  # gripper: -1 open, +1 closed (LIBERO's)
    return a


def task(episode: int) -> str:
    return TASKS[episode % 2]


def features(with_image: bool) -> dict:
    hwc = {"shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    out = {k: {"dtype": "video", **hwc} for k in VIDEO_KEYS}
    if with_image:
        out[IMAGE_KEY] = {"dtype": "image", **hwc}
    out["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": None}
    out["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": None}
    return out


def main(root: str, codec: str, lengths: list[int]) -> None:
    import torch

    # The PyPI torchvision wheel's C ops do not load against the CPU torch; lerobot only needs
    # their schemas to exist at import time.
    for op in ("nms", "qnms"):
        torch.library.define(
            f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        )
    import lerobot
    import lerobot.datasets.lerobot_dataset as lrd

    v3 = not lerobot.__version__.startswith("0.3")
    if v3:
        ds = lrd.LeRobotDataset.create(
            "f1jax/fixture", fps=FPS, features=features(True), root=root, vcodec=codec
        )
    else:  # 0.3.3 has no codec argument: its episode encoder takes it as a keyword
        lrd.encode_video_frames = functools.partial(lrd.encode_video_frames, vcodec=codec)
        ds = lrd.LeRobotDataset.create(
            "f1jax/fixture", fps=FPS, features=features(False), root=root
        )
    for e, n in enumerate(lengths):
        for t in range(n):
            frame = {k: scene(e, t, c) for c, k in enumerate(VIDEO_KEYS)}
            if v3:
                frame[IMAGE_KEY] = scene(e, t, 2)
            frame["observation.state"] = state(e, t)
            frame["action"] = action(e, t)
            if v3:
                ds.add_frame({**frame, "task": task(e)})
            else:
                ds.add_frame(frame, task=task(e))
        ds.save_episode()
    if v3:
        ds.finalize()
    print(json.dumps({"lerobot": lerobot.__version__, "root": root}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
