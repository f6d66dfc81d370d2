"""Closed-loop inference with a trained F1.

    policy = Policy.from_checkpoint("WORKDIR")           # or WORKDIR/checkpoints
    policy.reset()                                       # at every episode start
    out = policy.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "..."}, key)
    out["actions"]                                       # [chunk, action_dim], robot units

Observations become model inputs through the observation contract (`f1_jax.transforms`, the
functions the training pipeline uses, in eval mode) and are normalised with the statistics the
run recorded, so the model sees exactly what it saw in training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f1_jax import transforms
from f1_jax.models.f1 import F1, F1Config, model_inputs, sample_actions
from f1_jax.tokenizer import Tokenizer
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import state as st
from f1_jax.training.run_record import read_run_record


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a run's record says about the model and its data."""

    config: ml_collections.ConfigDict
    model_config: F1Config
    spec: transforms.ObservationSpec
    tokenizer_path: str
    dataset_name: str
    dataset_stats: dict  # {"state", "action", "norm_mode", ...} of dataset_name
    cameras: Mapping[str, str | None]  # standard camera -> dataset key
    step: int
    directory: str


def read_checkpoint_info(
    path: str, step: int | None = None, dataset: str | None = None
) -> CheckpointInfo:
    """Reads the JSON record of a run (workdir or checkpoints/) at `step` (default: latest)."""
    record = read_run_record(path, step)
    name = record.check_dataset(dataset)
    return CheckpointInfo(
        config=record.config,
        model_config=record.model_config,
        spec=record.spec,
        tokenizer_path=record.tokenizer_path,
        dataset_name=name,
        dataset_stats=record.statistics[name],
        cameras=record.cameras[name],
        step=record.step,
        directory=record.directory,
    )


class Policy:
    """A trained F1 behind the observation contract, with the episode's frame history."""

    def __init__(
        self, model: F1, params: Any, info: CheckpointInfo, tokenizer_path: str | None = None
    ):
        self.model = model
        self.params = params
        self.info = info
        self.spec = info.spec
        tokenizer = Tokenizer(tokenizer_path or info.tokenizer_path, info.spec.max_token_len)
        self.transform = transforms.ObservationTransform(
            info.spec, info.cameras, info.dataset_stats, tokenizer
        )
        # One compiled program per value of return_foresight, reused for every call.
        self._infer_fn = jax.jit(self._infer_device, static_argnames="return_foresight")

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        step: int | None = None,
        dataset: str | None = None,
        use_ema: bool = False,
        tokenizer_path: str | None = None,
        device: jax.Device | None = None,
    ) -> "Policy":
        """Loads a run's parameters onto one device (no optimizer state) and its statistics.

        path: run workdir or its checkpoints/ dir; step: default latest; dataset: whose statistics
        (un)normalise state and actions, default the first of the mixture; tokenizer_path: overrides
        the recorded one (e.g. when the run was trained on another machine).
        """
        info = read_checkpoint_info(path, step, dataset)
        model = F1(info.model_config)
        sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
            nn.unbox(st.abstract_params(model)),
        )
        params = ckpt.restore_params(info.directory, info.step, abstract, use_ema=use_ema)
        return cls(model, params, info, tokenizer_path)

    # --- episode state ---------------------------------------------------------------------------

    @property
    def history(self) -> transforms.FrameHistory:
        return self.transform.history

    def reset(self) -> None:
        """Starts a new episode: forgets the generation camera's frame history."""
        self.transform.reset()

    def observe(self, observation: Mapping[str, Any]) -> None:
        """Records a step's generation frame without inferring (steps executed open-loop from a
        chunk must still enter the history, whose offsets count environment steps)."""
        self.transform.observe(observation)

    def preprocess(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Observation -> one model example (`spec.example_spec(training=False)` keys).

        Pushes the current generation frame into the episode history: call it (or `infer`) once per
        environment step, and `observe` on the steps in between.
        """
        example = self.transform(observation)
        example.pop("frame_index")
        return example

    # --- model -----------------------------------------------------------------------------------

    def _infer_device(
        self, params: Any, example: dict, rng: jax.Array, return_foresight: bool
    ) -> dict:
        batch = jax.tree.map(lambda x: x[None], example)
        obs = model_inputs(batch, self.model.config.foresight.history_frames)
        if not return_foresight:
            return {"actions": sample_actions(self.model, {"params": params}, obs, rng)[0]}
        actions, foresight = sample_actions(
            self.model, {"params": params}, obs, rng, return_foresight=True
        )
        return {
            "actions": actions[0],
            "foresight_tokens": foresight["tokens"][0],
            "foresight_image": foresight["image"][0],
        }

    def infer_normalized(
        self, example: Mapping[str, np.ndarray], rng: jax.Array, return_foresight: bool = False
    ) -> dict[str, np.ndarray]:
        """The jitted model on one preprocessed example: normalised actions [chunk, action_dim]
        (+ foresight)."""
        example = {k: jnp.asarray(v) for k, v in example.items()}
        out = self._infer_fn(self.params, example, rng, return_foresight=return_foresight)
        return jax.tree.map(np.asarray, out)

    def infer(
        self, observation: Mapping[str, Any], rng: jax.Array, return_foresight: bool = False
    ) -> dict[str, np.ndarray]:
        """One control step.

        observation: camera images uint8 [H, W, 3] by standard name ("primary", "wrist", ...) or by
          the dataset's keys ("image", "wrist_image"), "state" [Ds] in robot units, "instruction".
        Returns {"actions": float32 [chunk, action_dim] in robot units}; with return_foresight also
          "foresight_tokens" int32 [n] and "foresight_image" uint8 [h, w, 3] (the predicted frame
          `target_offsets[0]` steps ahead).
        """
        out = self.infer_normalized(self.preprocess(observation), rng, return_foresight)
        result = {"actions": self.transform.robot_actions(out["actions"])}
        if return_foresight:
            result["foresight_tokens"] = out["foresight_tokens"]
            result["foresight_image"] = transforms.foresight_to_uint8(out["foresight_image"])
        return result

    def compiled_count(self) -> int:
        """How many programs the inference function has compiled (1 per return_foresight value)."""
        return self._infer_fn._cache_size()
