"""Fractal / RT-1 (`fractal20220817_data` 0.1.0, 3 Hz).

Per step: observation/image (256x320 JPEG), observation/natural_language_instruction,
observation/base_pose_tool_reached f32[7] (xyz + quaternion), observation/gripper_closed f32[1],
action/world_vector f32[3], action/rotation_delta f32[3], action/gripper_closedness_action f32[1]
(relative: +1 close, -1 open, 0 keep), plus fields not used here.

Standardisation (Octo's rt1 transform): action = world_vector ++ rotation_delta ++ absolute
gripper (1 open, 0 closed); state = base_pose_tool_reached ++ gripper_closed (8 dims).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from data_pipelines import schema

KIND = "fractal"
TRANSFORM_VERSION = "fractal-v1"
DEFAULT_CAMERAS: Mapping[str, str | None] = {"primary": "image"}
SUPPORTED = "fractal20220817_data 0.1.0 (gs://gresearch/robotics/fractal20220817_data/0.1.0)"
REQUIRED_FEATURES = {
    "steps/action/world_vector": (3,),
    "steps/action/rotation_delta": (3,),
    "steps/action/gripper_closedness_action": (1,),
    "steps/observation/base_pose_tool_reached": (7,),
    "steps/observation/gripper_closed": (1,),
    "steps/observation/natural_language_instruction": "text",
}
GRIPPER_OPEN_POSITIVE = {6: (1.0, 0.0)}  # absolute: already 1 open / 0 closed


def feature_spec(image_size: tuple[int, int] = (256, 320)):
    """The TFDS feature spec of `fractal20220817_data` 0.1.0 (RT-1)."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    t = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "aspects": tfds.features.FeaturesDict(
                {
                    "already_success": tfds.features.Scalar(dtype=np.bool_),
                    "feasible": tfds.features.Scalar(dtype=np.bool_),
                    "has_aspects": tfds.features.Scalar(dtype=np.bool_),
                    "success": tfds.features.Scalar(dtype=np.bool_),
                    "undesirable": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
            "attributes": tfds.features.FeaturesDict(
                {
                    "collection_mode": tfds.features.Scalar(dtype=np.int64),
                    "collection_mode_name": tfds.features.Text(),
                    "data_type": tfds.features.Scalar(dtype=np.int64),
                    "data_type_name": tfds.features.Text(),
                    "env": tfds.features.Scalar(dtype=np.int64),
                    "env_name": tfds.features.Text(),
                    "location": tfds.features.Scalar(dtype=np.int64),
                    "location_name": tfds.features.Text(),
                    "objects_family": tfds.features.Scalar(dtype=np.int64),
                    "objects_family_name": tfds.features.Text(),
                    "task_family": tfds.features.Scalar(dtype=np.int64),
                    "task_family_name": tfds.features.Text(),
                }
            ),
            "steps": tfds.features.Dataset(
                {
                    "action": tfds.features.FeaturesDict(
                        {
                            "base_displacement_vector": t(shape=(2,), dtype=np.float32),
                            "base_displacement_vertical_rotation": t(shape=(1,), dtype=np.float32),
                            "gripper_closedness_action": t(shape=(1,), dtype=np.float32),
                            "rotation_delta": t(shape=(3,), dtype=np.float32),
                            "terminate_episode": t(shape=(3,), dtype=np.int32),
                            "world_vector": t(shape=(3,), dtype=np.float32),
                        }
                    ),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "observation": tfds.features.FeaturesDict(
                        {
                            "base_pose_tool_reached": t(shape=(7,), dtype=np.float32),
                            "gripper_closed": t(shape=(1,), dtype=np.float32),
                            "gripper_closedness_commanded": t(shape=(1,), dtype=np.float32),
                            "height_to_bottom": t(shape=(1,), dtype=np.float32),
                            "image": tfds.features.Image(
                                shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg"
                            ),
                            "natural_language_embedding": t(shape=(512,), dtype=np.float32),
                            "natural_language_instruction": tfds.features.Text(),
                            "orientation_box": t(shape=(2, 3), dtype=np.float32),
                            "orientation_start": t(shape=(4,), dtype=np.float32),
                            "robot_orientation_positions_box": t(shape=(3, 3), dtype=np.float32),
                            "rotation_delta_to_go": t(shape=(3,), dtype=np.float32),
                            "src_rotation": t(shape=(4,), dtype=np.float32),
                            "vector_to_go": t(shape=(3,), dtype=np.float32),
                            "workspace_bounds": t(shape=(3, 3), dtype=np.float32),
                        }
                    ),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                }
            ),
        }
    )


def relative_to_absolute_gripper(rel: np.ndarray) -> np.ndarray:
    """Relative gripper commands [T] (+1 close, -1 open, ~0 keep) -> absolute [T].

    Output: 1 open, 0 closed.

    Before the first command the gripper is in the state opposite to that command (open if the
    episode never commands it), and each command holds until the next one.
    """
    rel = np.asarray(rel, np.float32)
    cmd = np.where(rel < -0.1, 1.0, np.where(rel > 0.1, -1.0, 0.0))  # +1 = open, -1 = close
    nonzero = np.flatnonzero(cmd)
    state = -cmd[nonzero[0]] if len(nonzero) else 1.0
    out = np.empty_like(cmd)
    for i, c in enumerate(cmd):
        if c != 0:
            state = c
        out[i] = state
    return (out / 2 + 0.5).astype(np.float32)


def standardize(
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None = None,
) -> schema.StdEpisode:
    """Decoded Fractal episode -> StdEpisode (state 8, action 7)."""
    steps = raw["steps"]
    obs, act = steps["observation"], steps["action"]
    gripper = relative_to_absolute_gripper(np.asarray(act["gripper_closedness_action"])[:, 0])
    action = np.concatenate(
        [act["world_vector"], act["rotation_delta"], gripper[:, None]], axis=1
    ).astype(np.float32)
    state = np.concatenate([obs["base_pose_tool_reached"], obs["gripper_closed"]], axis=1).astype(
        np.float32
    )
    return schema.StdEpisode(
        dataset_name=dataset_name,
        episode_id=episode_id,
        images=schema.select_cameras(obs, cameras or DEFAULT_CAMERAS),
        state=state,
        action=action,
        language=schema.as_text(obs["natural_language_instruction"][0]),
        sample_range=(0, len(state)),
    )
