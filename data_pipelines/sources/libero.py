"""LIBERO (`libero_{spatial,object,goal,10}_no_noops`, openvla/modified_libero_rlds).

Per step: observation/image and observation/wrist_image (256x256 JPEG, already rotated 180 deg
by the builder), observation/state f32[8] = eef pos(3) + axis-angle(3) + gripper qpos(2),
observation/joint_state f32[7], action f32[7] = eef delta(6) + gripper (-1 open, +1 close),
language_instruction. Also the schema the built-in simulated task writes.

Actions are kept in the dataset's own gripper convention (-1 open / +1 close), which is what the
LIBERO simulator consumes, so evaluation needs no inversion (OpenVLA inverts to 1=open only
because it discretises actions into tokens). With `gripper_convention="open_is_positive"` the
gripper action becomes (1 - a) / 2 (1 open, 0 closed; equal to OpenVLA's 1 - clip(a, 0, 1) on the
release's -1/+1 values, but affine, so a policy can map it back exactly).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np

from data_pipelines import schema

KIND = "libero"
TRANSFORM_VERSION = "libero-v1"
DEFAULT_CAMERAS: Mapping[str, str | None] = {"primary": "image", "wrist": "wrist_image"}
STATE_DIM = 8
ACTION_DIM = 7
SUPPORTED = (
    "libero_{spatial,object,goal,10}_no_noops 1.0.0 (HF openvla/modified_libero_rlds) and "
    "datasets written with `sources.libero.write_dataset`"
)
REQUIRED_FEATURES = {
    "steps/observation/state": (STATE_DIM,),
    "steps/action": (ACTION_DIM,),
    "steps/language_instruction": "text",
}
GRIPPER_OPEN_POSITIVE = {6: (-0.5, 0.5)}  # -1 open / +1 close -> 1 open / 0 closed


def feature_spec(image_size: tuple[int, int] = (256, 256)):
    """The exact TFDS feature spec of the LIBERO RLDS release (for writers and test fixtures)."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    img = tfds.features.Image(shape=(*image_size, 3), dtype=np.uint8, encoding_format="jpeg")
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": tfds.features.FeaturesDict(
                        {
                            "image": img,
                            "wrist_image": img,
                            "state": tfds.features.Tensor(shape=(8,), dtype=np.float32),
                            "joint_state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                        }
                    ),
                    "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                    "discount": tfds.features.Scalar(dtype=np.float32),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "language_instruction": tfds.features.Text(),
                }
            ),
            "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
        }
    )


def write_dataset(
    data_dir: str,
    name: str,
    episodes: Iterable[dict[str, Any]],
    image_size: tuple[int, int] = (256, 256),
    file_format: str = "tfrecord",
) -> str:
    """Writes episodes in the LIBERO RLDS schema as a TFDS dataset; returns its version dir.

    Each episode is {"steps": [step dict per feature_spec, ...], "episode_metadata":
    {"file_path": str}}; images are uint8 [H, W, 3] arrays (JPEG-encoded on write). Used by the
    built-in simulated task and by tests; the result is read like the released datasets.
    """
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    examples = ((f"episode_{i:06d}", ep) for i, ep in enumerate(episodes))
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=feature_spec(image_size),
        data_dir=data_dir,
        split_datasets={"train": examples},
        file_format=file_format,
    )
    return os.path.join(data_dir, name, "1.0.0")


def standardize(
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None = None,
) -> schema.StdEpisode:
    """Decoded LIBERO episode (steps stacked [T, ...]) -> StdEpisode (state 8, action 7)."""
    steps = raw["steps"]
    obs = steps["observation"]
    state = np.asarray(obs["state"], np.float32)
    action = np.asarray(steps["action"], np.float32)
    if state.shape[1:] != (STATE_DIM,) or action.shape[1:] != (ACTION_DIM,):
        raise schema.SchemaError(
            f"LIBERO expects state [T,8] and action [T,7], got {state.shape} and {action.shape}"
        )
    return schema.StdEpisode(
        dataset_name=dataset_name,
        episode_id=episode_id,
        images=schema.select_cameras(obs, cameras or DEFAULT_CAMERAS),
        state=state,
        action=action,
        language=schema.as_text(steps["language_instruction"][0]),
        sample_range=(0, len(state)),
    )
