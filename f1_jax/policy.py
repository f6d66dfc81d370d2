"""Closed-loop inference with a trained F1 checkpoint.

    policy = Policy.from_checkpoint("WORKDIR")           # or WORKDIR/checkpoints
    policy.reset()                                       # at every episode start
    out = policy.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "..."}, key)
    out["actions"]                                       # [chunk, action_dim], robot units

Observations are turned into model inputs with the data pipeline's own functions (eval mode:
no colour augmentation, centred generation crops) and normalised with the statistics stored in
the checkpoint, so the model sees exactly what it saw in training.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import images as img_ops
from data_pipelines import normalize, schema, windows
from data_pipelines.config import DataConfig
from data_pipelines.pipeline import eval_config, unnormalize_actions
from data_pipelines.sources import get_source
from data_pipelines.tokenizer import Tokenizer
from f1_jax.models.f1 import F1, sample_actions
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import state as st
from f1_jax.training import trainer
from f1_jax.training.batch import model_inputs


# ---------------------------------------------------------------------------------------------
# Pure preprocessing pieces (each mirrors one step of data_pipelines.sample.SampleBuilder).


def camera_frames(
    observation: Mapping[str, Any], cameras: Mapping[str, str | None]
) -> dict[str, np.ndarray]:
    """Standard camera name -> uint8 [H, W, 3], from standard names or the dataset's own keys.

    cameras: the dataset's mapping standard name -> dataset key (None = camera absent).
    """
    frames = {}
    for name, key in cameras.items():
        if key is None:
            continue
        value = observation.get(name, observation.get(key))
        if value is None:
            raise KeyError(
                f"observation has neither {name!r} nor {key!r}; keys: {sorted(observation)}"
            )
        value = np.asarray(value)
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[-1] != 3:
            # Training decoded JPEGs to uint8 RGB; a float image would be silently mis-scaled.
            raise ValueError(
                f"camera {name!r}: expected uint8 [H, W, 3], got {value.dtype} {value.shape}"
            )
        frames[name] = value
    return frames


def understanding_images(
    frames: Mapping[str, np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [3, size, size, 3] (schema.CAMERAS order, zeros if absent) and present mask bool [3]."""
    und = np.zeros((len(schema.CAMERAS), size, size, 3), np.uint8)
    present = np.array([c in frames for c in schema.CAMERAS])
    for k, cam in enumerate(schema.CAMERAS):
        if present[k]:
            und[k] = img_ops.resize_with_pad(frames[cam], size, size)
    return und, present


def generation_frame(frame: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """One generation-camera frame -> uint8 [crop, crop, 3]: short side to `resize`, centred crop
    (training's eval mode; the centred origin depends only on the frame size)."""
    shape = img_ops.short_side_shape(frame.shape[:2], resize)
    origin = img_ops.crop_origin(shape, crop, None)
    return img_ops.resize_short_side_and_crop(frame, resize, crop, origin)


def normalized_state(
    state: np.ndarray, stats: Mapping[str, Any], mode: str, dim: int = schema.MAX_DIM
) -> np.ndarray:
    """Raw state [Ds] -> normalised, zero-padded float32 [dim]."""
    state = np.asarray(state, np.float32).reshape(-1)
    expected = len(stats["mean"])
    if state.shape[0] != expected:
        raise ValueError(
            f"state has {state.shape[0]} dims; the training statistics have {expected}"
        )
    return schema.pad_to(normalize.normalize(state, stats, mode), dim)[0]


class FrameHistory:
    """Processed generation-camera frames of the current episode, for offsets like (-9,-6,-3,0).

    Offsets before the episode start are clamped to its first frame, exactly like training's
    `windows.frame_indices` clamps them (the current frame is always the last one seen).
    """

    def __init__(self, offsets: tuple[int, ...]):
        if max(offsets) > 0:
            raise ValueError(f"history offsets must be <= 0, got {offsets}")
        self.offsets = tuple(offsets)
        self._frames: collections.deque = collections.deque(maxlen=1 - min(offsets))
        self._first: np.ndarray | None = None
        self.count = 0  # frames seen this episode

    def reset(self) -> None:
        self._frames.clear()
        self._first = None
        self.count = 0

    def push(self, frame: np.ndarray) -> None:
        if self._first is None:
            self._first = frame
        self._frames.append(frame)
        self.count += 1

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [len(offsets), h, w, 3] (oldest first) and is_pad bool [len(offsets)]."""
        if self.count == 0:
            raise RuntimeError("no frame pushed yet")
        t = self.count - 1
        idx, is_pad = windows.frame_indices(t, self.count, self.offsets)
        # deque holds frames t-len+1 .. t; clamped indices are >= t - len + 1 or 0 (the first frame).
        oldest = t - len(self._frames) + 1
        out = [self._first if i < oldest else self._frames[i - oldest] for i in idx.tolist()]
        return np.stack(out), is_pad


def foresight_to_uint8(image: np.ndarray) -> np.ndarray:
    """[..., h, w, 3] in [-1, 1] -> uint8 (the same mapping as the training loop's pictures)."""
    return np.clip((np.asarray(image, np.float32) + 1) * 127.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a run's record says about the model and its data."""

    config: ml_collections.ConfigDict
    data_config: DataConfig  # eval mode (no augmentation, centred crops)
    dataset_name: str
    dataset_stats: dict  # {"state", "action", "norm_mode", ...} of dataset_name
    cameras: Mapping[str, str | None]  # standard camera -> dataset key
    step: int
    directory: str


def read_checkpoint_info(
    path: str, step: int | None = None, dataset: str | None = None
) -> CheckpointInfo:
    """Reads the JSON record of a run (workdir or checkpoints/) at `step` (default: latest)."""
    run = ckpt.read_only_checkpoints(path)
    step = run.latest_step() if step is None else int(step)
    if step not in run.manager.all_steps():
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {run.manager.directory}; "
            f"steps: {sorted(run.manager.all_steps())}"
        )
    record = run.restore_record(step)
    config = ml_collections.ConfigDict(json.loads(record["config"]))
    model_config = trainer.model_config_from(config)
    data_config = eval_config(trainer.data_config_from(config.data, model_config))
    names = list(record["dataset_names"])
    name = names[0] if dataset is None else dataset
    if name not in record["dataset_statistics"]:
        raise KeyError(f"Unknown dataset {name!r}; this checkpoint has statistics for {names}.")
    ds = data_config.datasets[names.index(name)]
    cameras = dict(ds.cameras or get_source(ds.source).DEFAULT_CAMERAS)
    return CheckpointInfo(
        config=config,
        data_config=data_config,
        dataset_name=name,
        dataset_stats=record["dataset_statistics"][name],
        cameras=cameras,
        step=step,
        directory=str(run.manager.directory),
    )


class Policy:
    """A trained F1 with the training-time preprocessing and per-episode frame history."""

    def __init__(
        self, model: F1, params: Any, info: CheckpointInfo, tokenizer_path: str | None = None
    ):
        self.model = model
        self.params = params
        self.info = info
        cfg = info.data_config
        self.data_config = cfg
        self.tokenizer = Tokenizer(tokenizer_path or cfg.tokenizer_path, cfg.max_token_len)
        self.history = FrameHistory(tuple(cfg.history_offsets))
        self.action_dim = len(info.dataset_stats["action"]["mean"])
        self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
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
        model = F1(trainer.model_config_from(info.config))
        sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
            nn.unbox(st.abstract_params(model)),
        )
        params = ckpt.restore_params(info.directory, info.step, abstract, use_ema=use_ema)
        return cls(model, params, info, tokenizer_path)

    # --- episode state ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Starts a new episode: forgets the generation camera's frame history."""
        self.history.reset()

    def observe(self, observation: Mapping[str, Any]) -> None:
        """Records a step's generation frame without inferring (steps executed open-loop from a
        chunk must still enter the history, whose offsets count environment steps)."""
        frames = camera_frames(observation, self.info.cameras)
        cfg = self.data_config
        if cfg.gen_camera in frames:
            self.history.push(
                generation_frame(frames[cfg.gen_camera], cfg.gen_resize, cfg.gen_crop)
            )

    # --- preprocessing ---------------------------------------------------------------------------

    def _encode(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        if instruction not in self._tokens:
            self._tokens[instruction] = self.tokenizer.encode(instruction)
        return self._tokens[instruction]

    def preprocess(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Observation -> one data-pipeline example (BATCH_SPEC keys without the batch dim).

        Pushes the current generation frame into the episode history: call it (or `infer`) once per
        environment step, and `observe` on the steps in between.
        """
        cfg, stats = self.data_config, self.info.dataset_stats
        frames = camera_frames(observation, self.info.cameras)
        und, present = understanding_images(frames, cfg.und_image_size)
        # Everything that can reject the observation runs before the history is touched.
        tokens, token_mask = self._encode(str(observation["instruction"]))
        state = normalized_state(
            observation["state"], stats["state"], stats["norm_mode"], cfg.state_dim
        )
        if cfg.gen_camera in frames:
            self.history.push(
                generation_frame(frames[cfg.gen_camera], cfg.gen_resize, cfg.gen_crop)
            )
            gen, gen_pad = self.history.window()
        else:  # like training: a dataset without the generation camera gets blank, padded frames
            n = len(cfg.history_offsets)
            gen = np.zeros((n, cfg.gen_crop, cfg.gen_crop, 3), np.uint8)
            gen_pad = np.ones(n, bool)
        return {
            "images": und,
            "image_mask": present,
            "gen_frames": gen,
            "gen_frames_is_pad": gen_pad,
            "state": state,
            "tokens": tokens,
            "token_mask": token_mask,
        }

    # --- model -----------------------------------------------------------------------------------

    def _infer_device(
        self, params: Any, example: dict, rng: jax.Array, return_foresight: bool
    ) -> dict:
        batch = jax.tree.map(lambda x: x[None], example)
        inputs = model_inputs(batch, self.model.config.foresight.history_frames)
        obs = {
            k: inputs[k]
            for k in ("images", "image_masks", "tokens", "token_mask", "state", "history")
        }
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
        """The jitted model on one preprocessed example: normalised actions [chunk, 32] (+foresight)."""
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
        result = {"actions": unnormalize_actions(out["actions"], self.info.dataset_stats)}
        if return_foresight:
            result["foresight_tokens"] = out["foresight_tokens"]
            result["foresight_image"] = foresight_to_uint8(out["foresight_image"])
        return result

    def compiled_count(self) -> int:
        """How many programs the inference function has compiled (1 per return_foresight value)."""
        return self._infer_fn._cache_size()
