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
A configuration of the RLDS source (`SPEC`, the operations in `sources/rlds.py`); this module also
holds the release's feature spec (for the tests' fixtures).
"""

from __future__ import annotations

import numpy as np

# The configuration (data_pipelines/sources/rlds.py): the four steps above.
SPEC = {
    "name": "bridge",
    "cameras": {"primary": "image_0", "secondary": "image_1"},
    "skip_first_steps": 1,
    "state": [
        {"key": "observation/state", "slice": [0, 6], "dims": 7},
        {"zeros": 1},
        {"key": "observation/state", "slice": [6, 7], "dims": 7},
    ],
    "action": [
        {"key": "observation/state", "slice": [0, 6], "dims": 7, "op": "next_minus_current"},
        {"key": "action", "slice": [6, 7], "dims": 7, "op": "binarize_gripper"},
    ],
    "language": "language_instruction",
    "gripper": {"dims": [6], "convention": "1_open_0_closed"},
    "control_frequency": 5,
    # image_0 is always recorded; the others only where the episode says so.
    "camera_present": {f"image_{k}": f"has_image_{k}" for k in (1, 2, 3)},
    "supported": (
        "Rail's Bridge-v2 release bridge_dataset 1.0.0 (rail.eecs.berkeley.edu/datasets/"
        "bridge_release/data/tfds/bridge_dataset/; OpenVLA names the same folder bridge_orig)"
    ),
    "unsupported_hints": {
        "bridge": (
            "This is the Open X-Embodiment copy `bridge` 0.1.0 (action as a dict of world_vector, "
            "rotation_delta, open_gripper, terminate_episode; 480x640 images), which this source "
            "does not read: download bridge_dataset 1.0.0 instead."
        )
    },
    "version": "bridge-v1",
}


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
