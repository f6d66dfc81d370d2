"""From the data pipeline's batch (uint8 images, padded arrays) to the model's inputs.

Runs inside the jitted step, so images travel to the accelerator as uint8 (4x less transfer) and
are converted there.
"""

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1] (float inputs are assumed to be in [-1, 1] already)."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return images.astype(jnp.float32)


def model_inputs(batch: Batch, num_history: int = 4) -> Batch:
    """Data-pipeline keys -> F1 keys (see f1_jax.models.f1.F1 and data_pipelines.pipeline.BATCH_SPEC).

    gen_frames [B, num_history + 1, h, w, 3] holds the history frames then the target frame.
    """
    inputs = {
        "images": to_unit_range(batch["images"]),
        "image_masks": batch["image_mask"].astype(bool),
        "tokens": batch["tokens"].astype(jnp.int32),
        "token_mask": batch["token_mask"].astype(bool),
        "state": batch["state"].astype(jnp.float32),
    }
    frames = to_unit_range(batch["gen_frames"])
    inputs["history"] = frames[:, :num_history]
    if frames.shape[1] > num_history:
        inputs["target_frame"] = frames[:, num_history]
    if "actions" in batch:
        inputs["actions"] = batch["actions"].astype(jnp.float32)
        inputs["action_is_pad"] = batch["action_is_pad"].astype(bool)
    return inputs
