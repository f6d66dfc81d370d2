"""Builders of tiny fixture episodes (values chosen so tests can compute expectations by hand)."""

from __future__ import annotations

import os

import numpy as np

IMG = 16  # fixture image side; tests use small output sizes too


def frame(value: int, shape=(IMG, IMG)) -> np.ndarray:
    """A uniform-colour frame (decodes back almost exactly from JPEG)."""
    return np.full((*shape, 3), value % 256, np.uint8)


def write_rlds(
    root, name: str, features, episodes: list[dict], file_format="tfrecord", version="1.0.0"
) -> str:
    """Writes episodes as a TFDS dataset with TFDS's own writer; returns its version directory."""
    import tensorflow_datasets as tfds

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version=version,
        features=features,
        data_dir=os.fspath(root),
        split_datasets={"train": [(f"ep{i}", ep) for i, ep in enumerate(episodes)]},
        file_format=file_format,
    )
    return os.path.join(os.fspath(root), name, version)


# ------------------------------------------------------------------ damaging copies of datasets


def copy_dataset(src: str, dst: str) -> str:
    """A copy of a TFDS version directory without cached summaries."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("f1_dataset_summary_*"))
    return dst


def shard_path(dataset_dir: str) -> str:
    """The (single) data shard of a fixture dataset."""
    (name,) = [n for n in os.listdir(dataset_dir) if ".tfrecord-" in n or ".array_record-" in n]
    return os.path.join(dataset_dir, name)


def record_payload(shard: str, k: int) -> tuple[int, bytes]:
    """(file offset, bytes) of the payload of record k of a TFRecord shard."""
    from data_pipelines.reader import scan_tfrecord

    index = scan_tfrecord(shard)
    off, n = int(index.offsets[k]), int(index.lengths[k])
    with open(shard, "rb") as f:
        f.seek(off)
        return off, f.read(n)


def flip_byte(path: str, offset: int, mask: int = 0x40) -> None:
    """XORs one byte of a file in place (what bit rot or a bad copy does)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def rewrite_payload(shard: str, k: int, payload: bytes) -> None:
    """Replaces record k's payload with same-length bytes and a matching checksum: a record that
    was written broken (its checksum vouches for the broken bytes)."""
    import struct

    from data_pipelines.integrity import masked_crc32c

    off, old = record_payload(shard, k)
    assert len(payload) == len(old)
    with open(shard, "r+b") as f:
        f.seek(off)
        f.write(payload + struct.pack("<I", masked_crc32c(payload)))


# ------------------------------------------------------------------ the OXE copy of Bridge


def bridge_oxe_feature_spec(image_size=(480, 640)):
    """The Open X-Embodiment copy `bridge` 0.1.0: action as a dict, one 480 x 640 camera,
    language inside the observation (an unsupported layout: the bridge source must refuse it)."""
    import tensorflow_datasets as tfds

    t = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "action": tfds.features.FeaturesDict(
                        {
                            "open_gripper": tfds.features.Scalar(dtype=np.bool_),
                            "rotation_delta": t(shape=(3,), dtype=np.float32),
                            "terminate_episode": tfds.features.Scalar(dtype=np.float32),
                            "world_vector": t(shape=(3,), dtype=np.float32),
                        }
                    ),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "observation": tfds.features.FeaturesDict(
                        {
                            "image": tfds.features.Image(
                                shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg"
                            ),
                            "natural_language_embedding": t(shape=(512,), dtype=np.float32),
                            "natural_language_instruction": tfds.features.Text(),
                            "state": t(shape=(7,), dtype=np.float32),
                        }
                    ),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                }
            )
        }
    )


def bridge_oxe_episode(n: int = 3, image_size=(48, 64)) -> dict:
    steps = [
        {
            "action": {
                "open_gripper": True,
                "rotation_delta": np.zeros(3, np.float32),
                "terminate_episode": 0.0,
                "world_vector": np.full(3, t, np.float32),
            },
            "is_first": t == 0,
            "is_last": t == n - 1,
            "is_terminal": False,
            "observation": {
                "image": frame(10 * t, image_size),
                "natural_language_embedding": np.zeros(512, np.float32),
                "natural_language_instruction": "put the spoon in the pot",
                "state": np.full(7, t, np.float32),
            },
            "reward": 0.0,
        }
        for t in range(n)
    ]
    return {"steps": steps}


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

# Episodes with the quirks a summary must count: (length, instruction).
LONG_TEXT = " ".join(["pick up the black bowl and open the top drawer"] * 4)
QUIRK_EPISODES = (
    (4, LIBERO_TEXTS[0]),
    (5, ""),  # empty instruction
    (0, LIBERO_TEXTS[1]),  # zero steps
    (3, LONG_TEXT),  # longer than a 16-token budget
    (2, LIBERO_TEXTS[2]),
)


def libero_quirk_episodes() -> list[dict]:
    return [libero_episode(n, i, text) for i, (n, text) in enumerate(QUIRK_EPISODES)]


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
    """A DataConfig with tiny image sizes so tests stay fast on 2 cores; `overrides` are DataConfig
    fields or, flat, the observation's (chunk_size, gen_crop, ...)."""
    from data_pipelines.config import OBSERVATION_FIELDS, DataConfig
    from f1_common.transforms import ObservationSpec

    spec = {"chunk_size": 4, "und_image_size": 24, "gen_resize": 20, "gen_crop": 16}
    spec.update({k: overrides.pop(k) for k in OBSERVATION_FIELDS if k in overrides})
    kw = dict(
        datasets=tuple(datasets),
        tokenizer_path=tokenizer_path,
        batch_size=4,
        observation=ObservationSpec(**spec),
        read_threads=1,
        prefetch_buffer_size=4,
    )
    kw.update(overrides)
    return DataConfig(**kw)


AGIBOT_T = 25
AGIBOT_INDEX_LEN = 22  # like 1221 of 1278 in a real file: fewer index entries than frames
AGIBOT_EFF_INDEX = np.array([0, 5, 10, 15, 20])  # the older sparse layout's commanded frames


def agibot_index(length: int, n: int) -> np.ndarray:
    """n increasing frames of [0, length): the frames with a command (the last ones missing)."""
    return np.arange(min(n, length), dtype=np.int64)


def agibot_arrays(length: int = AGIBOT_T, index_len: int = AGIBOT_INDEX_LEN) -> dict:
    """Every group of a real proprio_stats.h5 (the dataset card's table), in its units: joints
    rad, state gripper opening in mm, action gripper closedness 0 (open) .. 1 (closed). Each
    position array has one row per frame; the `index` arrays are shorter (index_len entries)."""
    t = np.arange(length, dtype=np.float32)[:, None]
    j = np.arange(14, dtype=np.float32) / 100
    idx = agibot_index(length, index_len)
    quat = np.broadcast_to(np.array([1, 0, 0, 0], np.float32), (length, 2, 4)).copy()
    return {
        "timestamp": np.arange(length, dtype=np.int64) * 33_333_333,
        "state/joint/position": t + j,
        "state/joint/current_value": np.zeros((length, 14), np.float32),
        "state/joint/velocity": np.zeros((length, 14), np.float32),
        "state/effector/position": np.concatenate([4 * t, 120 - 4 * t], 1),  # mm
        "state/effector/force": np.zeros((length, 2), np.float32),
        "state/end/position": np.zeros((length, 2, 3), np.float32),
        "state/end/orientation": quat,
        "state/head/position": np.zeros((length, 2), np.float32),
        "state/waist/position": np.zeros((length, 2), np.float32),
        "state/robot/position": np.zeros((length, 3), np.float32),
        "state/robot/orientation": np.tile(np.array([1, 0, 0, 0], np.float32), (length, 1)),
        "action/joint/position": 1000 + t + j,
        "action/joint/index": idx,
        "action/effector/position": np.concatenate([t / 100, 1 - t / 100], 1),  # closedness
        "action/effector/index": idx[::2],
        "action/end/position": np.zeros((length, 2, 3), np.float32),
        "action/end/orientation": quat,
        "action/end/index": idx,
        "action/head/position": np.zeros((length, 2), np.float32),
        "action/head/index": idx,
        "action/waist/position": np.zeros((length, 2), np.float32),
        "action/waist/index": idx,
        "action/robot/velocity": np.zeros((length, 2), np.float32),
        "action/robot/index": idx,
    }


def agibot_sparse_arrays(length: int = AGIBOT_T) -> dict:
    """The older layout: effector action rows only at their `index` frames (AGIBOT_EFF_INDEX)."""
    arrays = agibot_arrays(length)
    idx = AGIBOT_EFF_INDEX[AGIBOT_EFF_INDEX < length]
    arrays["action/effector/position"] = arrays["action/effector/position"][idx]
    arrays["action/effector/index"] = idx
    return arrays


def _write_agibot_h5(path: str, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def write_agibot_raw(root: str, sparse_episode: bool = False) -> str:
    """task 327: episode 1 good (release layout, frames as PNG folders), episode 2 missing its
    h5, and with sparse_episode an episode 3 in the older sparse effector layout; task 352
    (known broken) must be skipped without being read."""
    import json

    from PIL import Image

    os.makedirs(os.path.join(root, "task_info"))
    with open(os.path.join(root, "task_info", "task_327.json"), "w") as f:
        json.dump(
            [
                {"episode_id": e, "task_name": "Pick up the apple | supermarket"}
                for e in ((1, 2, 3) if sparse_episode else (1, 2))
            ],
            f,
        )
    with open(os.path.join(root, "task_info", "task_352.json"), "w") as f:
        json.dump([{"episode_id": 9, "task_name": "broken"}], f)
    episodes = [(1, agibot_arrays())] + ([(3, agibot_sparse_arrays())] if sparse_episode else [])
    for ep, arrays in episodes:
        h5 = os.path.join(root, "proprio_stats", "327", str(ep), "proprio_stats.h5")
        _write_agibot_h5(h5, arrays)
        for cam, base in (("head", 0), ("hand_left", 100), ("hand_right", 200)):
            d = os.path.join(root, "observations", "327", str(ep), "videos", f"{cam}_color")
            os.makedirs(d)
            for t in range(AGIBOT_T):
                img = frame(base + 5 * t, (12, 16))
                Image.fromarray(img).save(os.path.join(d, f"{t:05d}.png"))
    return root


def pack_agibot_release(raw: str, dest: str, compress: bool = False) -> str:
    """The raw tree as the release ships it: task_info/*.json as files,
    proprio_stats/proprio_stats.tar (members <task>/<episode>/proprio_stats.h5) and
    observations/<task>/<first>-<last>.tar (members <episode>/videos/...)."""
    import shutil
    import tarfile

    mode, ext = ("w:gz", ".tar.gz") if compress else ("w", ".tar")
    shutil.copytree(os.path.join(raw, "task_info"), os.path.join(dest, "task_info"))
    os.makedirs(os.path.join(dest, "proprio_stats"))
    with tarfile.open(os.path.join(dest, "proprio_stats", "proprio_stats" + ext), mode) as tf:
        tf.add(os.path.join(raw, "proprio_stats", "327"), arcname="327")
    obs = os.path.join(raw, "observations", "327")
    episodes = sorted(os.listdir(obs), key=int)
    os.makedirs(os.path.join(dest, "observations", "327"))
    name = f"{episodes[0]}-{episodes[-1]}{ext}"
    with tarfile.open(os.path.join(dest, "observations", "327", name), mode) as tf:
        for ep in episodes:
            tf.add(os.path.join(obs, ep), arcname=ep)
    return dest


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
