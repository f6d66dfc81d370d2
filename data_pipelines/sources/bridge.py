"""Bridge-v2, Rail's copy (`bridge_dataset` 1.0.0; OpenVLA calls the same folder `bridge_orig`).

Per step: observation/image_0..image_3 (JPEG), observation/state f32[7] = xyz + rpy + gripper,
action f32[7] = delta xyz + delta rpy + gripper in [0, 1], language_instruction (may be "").

Standardisation, as Octo/OpenVLA do for this copy:
1. drop the first step (its action is all zeros: the teleop had not started);
2. binarise the gripper action (>0.95 open=1, <0.05 closed=0; values in between take the next
   decided value, looking forward in time);
3. relabel the movement with the reached state: action[t, :6] = state[t+1, :6] - state[t, :6]
   (drops the last step, which has no successor);
4. state = [xyz, rpy, 0, gripper] (8 dims, OpenVLA's POS_EULER + pad + gripper layout).
Episodes recorded without camera k store dummy frames and `episode_metadata/has_image_k` False;
such cameras (k >= 1) are reported absent. image_0 is always kept: every episode has it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from data_pipelines import schema

KIND = "bridge"
TRANSFORM_VERSION = "bridge-v1"
DEFAULT_CAMERAS: Mapping[str, str | None] = {"primary": "image_0", "secondary": "image_1"}
OPEN_THRESHOLD = 0.95
CLOSED_THRESHOLD = 0.05
SUPPORTED = (
    "Rail's Bridge-v2 release bridge_dataset 1.0.0 (rail.eecs.berkeley.edu/datasets/"
    "bridge_release/data/tfds/bridge_dataset/; OpenVLA names the same folder bridge_orig)"
)
REQUIRED_FEATURES = {
    "steps/observation/state": (7,),
    "steps/action": (7,),
    "steps/language_instruction": "text",
}
UNSUPPORTED_HINTS = {
    "bridge": (
        "This is the Open X-Embodiment copy `bridge` 0.1.0 (action as a dict of world_vector, "
        "rotation_delta, open_gripper, terminate_episode; 480x640 images), which this source "
        "does not read: download bridge_dataset 1.0.0 instead."
    )
}
GRIPPER_OPEN_POSITIVE = {6: (1.0, 0.0)}  # binarised: already 1 open / 0 closed


def feature_spec(image_size: tuple[int, int] = (256, 256)):
    """The TFDS feature spec of Rail's `bridge_dataset` 1.0.0 release."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    img = tfds.features.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg")
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": tfds.features.FeaturesDict(
                        {
                            "image_0": img,
                            "image_1": img,
                            "image_2": img,
                            "image_3": img,
                            "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                        }
                    ),
                    "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                    "discount": tfds.features.Scalar(dtype=np.float32),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "language_instruction": tfds.features.Text(),
                    "language_embedding": tfds.features.Tensor(shape=(512,), dtype=np.float32),
                }
            ),
            "episode_metadata": tfds.features.FeaturesDict(
                {
                    "file_path": tfds.features.Text(),
                    "episode_id": tfds.features.Scalar(dtype=np.int32),
                    "has_image_0": tfds.features.Scalar(dtype=np.bool_),
                    "has_image_1": tfds.features.Scalar(dtype=np.bool_),
                    "has_image_2": tfds.features.Scalar(dtype=np.bool_),
                    "has_image_3": tfds.features.Scalar(dtype=np.bool_),
                    "has_language": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
        }
    )


def binarize_gripper(gripper: np.ndarray) -> np.ndarray:
    """Continuous gripper command [T] in [0, 1] -> {0 closed, 1 open} [T] float32.

    Undecided values (between the thresholds) take the next decided value in time, since the
    operator was moving towards it; a trailing undecided run keeps the last decided value (or
    the rounded value if there is none).
    """
    g = np.asarray(gripper, np.float32)
    out = np.zeros_like(g)
    decided_open = g > OPEN_THRESHOLD
    decided = decided_open | (g < CLOSED_THRESHOLD)
    carry = float(decided_open[-1])
    for i in range(len(g) - 1, -1, -1):
        if decided[i]:
            carry = float(decided_open[i])
        out[i] = carry
    return out


def standardize(
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None = None,
) -> schema.StdEpisode:
    """Decoded Bridge episode -> StdEpisode, relabelled (T-2 steps, state 8, action 7)."""
    steps = raw["steps"]
    obs = steps["observation"]
    state = np.asarray(obs["state"], np.float32)[1:]  # drop the all-zero-action first step
    action = np.asarray(steps["action"], np.float32)[1:]
    if len(state) < 2:
        raise schema.SchemaError(
            f"Bridge episode {episode_id} has {len(state) + 1} steps; need >= 3 to relabel"
        )
    gripper = binarize_gripper(action[:, 6])
    movement = state[1:, :6] - state[:-1, :6]
    new_action = np.concatenate([movement, gripper[:-1, None]], axis=1)
    t = len(new_action)
    new_state = np.concatenate(
        [state[:t, :6], np.zeros((t, 1), np.float32), state[:t, 6:7]], axis=1
    )
    cameras = dict(cameras or DEFAULT_CAMERAS)
    meta = raw.get("episode_metadata", {})
    for name, key in list(cameras.items()):
        flag = meta.get(f"has_{key}") if key and key != "image_0" else None
        if flag is not None and not bool(flag):
            cameras[name] = None
    images = {k: v[1 : 1 + t] for k, v in schema.select_cameras(obs, cameras).items()}
    return schema.StdEpisode(
        dataset_name=dataset_name,
        episode_id=episode_id,
        images=images,
        state=new_state,
        action=new_action.astype(np.float32),
        language=schema.as_text(steps["language_instruction"][0]),
        sample_range=(0, t),
    )
