"""Builders of tiny fixture episodes (values chosen so tests can compute expectations by hand)."""

from __future__ import annotations

import os

import numpy as np

IMG = 16  # fixture image side; tests use small output sizes too


def frame(value: int, shape=(IMG, IMG)) -> np.ndarray:
    """A uniform-colour frame (decodes back almost exactly from JPEG)."""
    return np.full((*shape, 3), value % 256, np.uint8)


def write_rlds(root, name: str, features, episodes: list[dict], file_format="tfrecord") -> str:
    """Writes episodes as a TFDS dataset; returns its version directory."""
    import tensorflow_datasets as tfds

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=features,
        data_dir=os.fspath(root),
        split_datasets={"train": [(f"ep{i}", ep) for i, ep in enumerate(episodes)]},
        file_format=file_format,
    )
    return os.path.join(os.fspath(root), name, "1.0.0")


def libero_episode(length: int, ep: int, text: str) -> dict:
    steps = []
    for t in range(length):
        steps.append(
            {
                "observation": {
                    "image": frame(10 * t + 50 * ep),
                    "wrist_image": frame(200 - 10 * t),
                    "state": np.arange(8, dtype=np.float32) + 100 * ep + t,
                    "joint_state": np.zeros(7, np.float32),
                },
                "action": np.array([t, -t, 0.5 * t, 0, 0, ep, (-1) ** t], np.float32),
                "discount": 1.0,
                "reward": float(t == length - 1),
                "is_first": t == 0,
                "is_last": t == length - 1,
                "is_terminal": t == length - 1,
                "language_instruction": text,
            }
        )
    return {"steps": steps, "episode_metadata": {"file_path": f"/demo/{ep}.hdf5"}}


LIBERO_LENGTHS = (6, 9, 3)
LIBERO_TEXTS = ("pick up the black bowl", "open the top drawer", "put the cup on the plate")

# Bridge: state[t] chosen so that relabelled deltas are known; gripper action with undecided
# values between the thresholds.
BRIDGE_STATES = [
    np.array(
        [
            [0, 0, 0, 0, 0, 0, 1],
            [1, 2, 3, 0.1, 0.2, 0.3, 1],
            [2, 4, 6, 0.2, 0.4, 0.6, 0.9],
            [4, 4, 4, 0.3, 0.3, 0.3, 0.5],
            [5, 5, 5, 0.5, 0.5, 0.5, 0.2],
            [7, 5, 3, 0.5, 0.5, 0.5, 0.1],
        ],
        np.float32,
    ),
    np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 2, 1, 0, 0, 1, 0],
            [3, 2, 1, 0, 0, 1, 0],
        ],
        np.float32,
    ),
]
BRIDGE_STATES.append(np.zeros((2, 7), np.float32))  # too short to relabel: "unusable"
BRIDGE_GRIPPER = [
    np.array([0.0, 1.0, 0.5, 0.7, 0.01, 0.3], np.float32),  # first dropped; 0.5,0.7 -> next(0)
    np.array([0.0, 0.99, 0.6, 0.98], np.float32),  # 0.6 -> next decided (open)
    np.array([0.0, 1.0], np.float32),
]


def bridge_episode(i: int) -> dict:
    states, grip = BRIDGE_STATES[i], BRIDGE_GRIPPER[i]
    steps = []
    for t in range(len(states)):
        action = np.zeros(7, np.float32) if t == 0 else np.full(7, 0.3, np.float32)
        action[6] = grip[t]
        steps.append(
            {
                "observation": {
                    "image_0": frame(20 * t),
                    "image_1": frame(100 + 20 * t),
                    "image_2": frame(0),
                    "image_3": frame(0),
                    "state": states[t],
                },
                "action": action,
                "discount": 1.0,
                "reward": 0.0,
                "is_first": t == 0,
                "is_last": t == len(states) - 1,
                "is_terminal": False,
                "language_instruction": "put the spoon in the pot",
                "language_embedding": np.zeros(512, np.float32),
            }
        )
    meta = {
        "file_path": f"b{i}",
        "episode_id": i,
        "has_image_0": True,
        "has_image_1": i != 1,
        "has_image_2": False,
        "has_image_3": False,
        "has_language": True,
    }
    return {"steps": steps, "episode_metadata": meta}


FRACTAL_GRIPPER_REL = np.array([0.0, 0.0, 1.0, 0.0, -1.0, 0.05], np.float32)


def fractal_episode(i: int) -> dict:
    steps = []
    n = len(FRACTAL_GRIPPER_REL)
    for t in range(n):
        obs = {
            "base_pose_tool_reached": np.arange(7, dtype=np.float32) + t,
            "gripper_closed": np.array([float(2 <= t < 4)], np.float32),
            "gripper_closedness_commanded": np.zeros(1, np.float32),
            "height_to_bottom": np.zeros(1, np.float32),
            "image": frame(30 * t, (IMG, IMG + 4)),
            "natural_language_embedding": np.zeros(512, np.float32),
            "natural_language_instruction": "pick coke can",
            "orientation_box": np.zeros((2, 3), np.float32),
            "orientation_start": np.zeros(4, np.float32),
            "robot_orientation_positions_box": np.zeros((3, 3), np.float32),
            "rotation_delta_to_go": np.zeros(3, np.float32),
            "src_rotation": np.zeros(4, np.float32),
            "vector_to_go": np.zeros(3, np.float32),
            "workspace_bounds": np.zeros((3, 3), np.float32),
        }
        act = {
            "base_displacement_vector": np.zeros(2, np.float32),
            "base_displacement_vertical_rotation": np.zeros(1, np.float32),
            "gripper_closedness_action": FRACTAL_GRIPPER_REL[t : t + 1] * (1 if i == 0 else 0),
            "rotation_delta": np.array([0.1, 0.2, 0.3], np.float32) * t,
            "terminate_episode": np.array([0, 1, 0], np.int32),
            "world_vector": np.array([1.0, 2.0, 3.0], np.float32) * t,
        }
        steps.append(
            {
                "action": act,
                "observation": obs,
                "reward": 0.0,
                "is_first": t == 0,
                "is_last": t == n - 1,
                "is_terminal": t == n - 1,
            }
        )
    aspects = {
        k: False for k in ("already_success", "feasible", "has_aspects", "success", "undesirable")
    }
    attributes = {}
    for k in ("collection_mode", "data_type", "env", "location", "objects_family", "task_family"):
        attributes[k] = 0
        attributes[k + "_name"] = "x"
    return {"steps": steps, "aspects": aspects, "attributes": attributes}


def small_config(datasets, tokenizer_path, **overrides):
    """A DataConfig with tiny image sizes so tests stay fast on 2 cores."""
    from data_pipelines.config import DataConfig

    kw = dict(
        datasets=tuple(datasets),
        tokenizer_path=tokenizer_path,
        batch_size=4,
        chunk_size=4,
        und_image_size=24,
        gen_resize=20,
        gen_crop=16,
        read_threads=1,
        prefetch_buffer_size=4,
    )
    kw.update(overrides)
    return DataConfig(**kw)


AGIBOT_T = 25
AGIBOT_EFF_INDEX = np.array([0, 5, 10, 15, 20])


def agibot_arrays(length: int = AGIBOT_T) -> dict[str, np.ndarray]:
    """Raw proprio arrays of a good fixture episode (sparse effector actions with an index;
    the AGIBOT_EFF_INDEX frames that fall inside `length`)."""
    t = np.arange(length, dtype=np.float32)[:, None]
    j = np.arange(14, dtype=np.float32) / 100
    idx = AGIBOT_EFF_INDEX[AGIBOT_EFF_INDEX < length]
    return {
        "state/joint/position": t + j,
        "state/effector/position": np.concatenate([t / 10, -t / 10], 1),
        "action/joint/position": 1000 + t + j,
        "action/effector/position": 9 * (idx[:, None] + np.array([[0.5, 0.25]])),
        "action/effector/index": idx,
    }


def _write_agibot_h5(path: str, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def write_agibot_raw(root: str) -> str:
    """task 327: episode 1 good (frames as PNG folders), episode 2 missing its h5;
    task 352 (known broken) must be skipped without being read."""
    import json
    import os

    import h5py
    from PIL import Image

    os.makedirs(os.path.join(root, "task_info"))
    with open(os.path.join(root, "task_info", "task_327.json"), "w") as f:
        json.dump(
            [
                {"episode_id": 1, "task_name": "Pick up the apple | supermarket"},
                {"episode_id": 2, "task_name": "Pick up the apple | supermarket"},
            ],
            f,
        )
    with open(os.path.join(root, "task_info", "task_352.json"), "w") as f:
        json.dump([{"episode_id": 9, "task_name": "broken"}], f)
    h5_dir = os.path.join(root, "proprio_stats", "327", "1")
    os.makedirs(h5_dir)
    with h5py.File(os.path.join(h5_dir, "proprio_stats.h5"), "w") as f:
        for k, v in agibot_arrays().items():
            f.create_dataset(k, data=v)
    for cam, base in (("head", 0), ("hand_left", 100), ("hand_right", 200)):
        d = os.path.join(root, "observations", "327", "1", "videos", f"{cam}_color")
        os.makedirs(d)
        for t in range(AGIBOT_T):
            Image.fromarray(frame(base + 5 * t, (12, 16))).save(os.path.join(d, f"{t:05d}.png"))
    return root


# ------------------------------------------------------------------ AgiBot with real mp4 videos

AGIBOT_MP4_FRAMES = 8
AGIBOT_MP4_PROPRIO = 9  # one proprio row more than video frames: the converter keeps the prefix
AGIBOT_MP4_SIZE = (24, 32)  # H, W (even, as yuv420p needs)
AGIBOT_MP4_CODEC = "mpeg4"  # built into libavcodec (LGPL), so every PyAV wheel can encode it
# Well separated flat colours (saturated ones survive yuv420p chroma subsampling as flat frames).
AGIBOT_PALETTE = np.array(
    [
        (200, 30, 30),
        (30, 200, 30),
        (30, 30, 200),
        (220, 220, 40),
        (40, 220, 220),
        (220, 40, 220),
        (128, 128, 128),
        (20, 20, 20),
    ],
    np.uint8,
)
AGIBOT_CAM_OFFSET = {"head": 0, "hand_left": 3, "hand_right": 5}


def agibot_mp4_colour(cam: str, t: int) -> np.ndarray:
    """The flat RGB colour written to frame t of camera `cam` of the mp4 fixture episode."""
    return AGIBOT_PALETTE[(t + AGIBOT_CAM_OFFSET[cam]) % len(AGIBOT_PALETTE)]


def write_mp4(path: str, frames, codec: str = AGIBOT_MP4_CODEC, fps: int = 30) -> None:
    """Encodes uint8 [H,W,3] RGB frames (H, W even) into an mp4 with PyAV."""
    import av

    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 2_000_000  # tiny frames: near-lossless flat colours
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


def write_agibot_mp4_raw(root: str, codec: str = AGIBOT_MP4_CODEC) -> str:
    """Raw AgiBot tree with real mp4 cameras (needs PyAV). Task 327:
    episode 1 good (AGIBOT_MP4_FRAMES frames per camera, AGIBOT_MP4_PROPRIO proprio rows);
    episode 2 its head video truncated to half its bytes (a download cut short);
    episode 3 its hand_left "video" is not an mp4 at all."""
    import json

    os.makedirs(os.path.join(root, "task_info"))
    with open(os.path.join(root, "task_info", "task_327.json"), "w") as f:
        json.dump(
            [{"episode_id": e, "task_name": "Stack the cups | kitchen"} for e in (1, 2, 3)], f
        )
    for ep in (1, 2, 3):
        _write_agibot_h5(
            os.path.join(root, "proprio_stats", "327", str(ep), "proprio_stats.h5"),
            agibot_arrays(AGIBOT_MP4_PROPRIO),
        )
        vdir = os.path.join(root, "observations", "327", str(ep), "videos")
        os.makedirs(vdir)
        for cam in AGIBOT_CAM_OFFSET:
            write_mp4(
                os.path.join(vdir, f"{cam}_color.mp4"),
                [
                    np.broadcast_to(agibot_mp4_colour(cam, t), (*AGIBOT_MP4_SIZE, 3)).copy()
                    for t in range(AGIBOT_MP4_FRAMES)
                ],
                codec,
            )
    head2 = os.path.join(root, "observations", "327", "2", "videos", "head_color.mp4")
    with open(head2, "rb") as f:
        data = f.read()
    with open(head2, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(
        os.path.join(root, "observations", "327", "3", "videos", "hand_left_color.mp4"), "wb"
    ) as f:
        f.write(b"this is not an mp4 file\n" * 8)
    return root
