"""The observation contract: how camera images, a robot state and an instruction become F1's inputs.

One module serves the training data pipeline (`data_pipelines.sample.SampleBuilder`), in-process
inference (`inference.jax_policy.Policy`), the policy server and the PyTorch runtime (`f1_torch`), so
training and inference cannot drift. It needs NumPy, Pillow and SentencePiece only: no JAX and no
TensorFlow, so a robot computer without either can import it.

What the model sees, per example (`ObservationSpec.example_spec` lists shapes and dtypes):
  images      uint8 [C, S, S, 3]   the C camera slots (`cameras`) resized with padding to S; an
              image_mask bool [C]  absent camera is zeros and masked out of attention
  gen_frames  uint8 [F, c, c, 3]   the generation camera at `history_offsets` (oldest first) then
                                   `target_offsets`: short side resized to `gen_resize`, one c x c
                                   crop shared by all F frames (centred at inference); training
                                   may ship them as the VQ-VAE's codes instead (`gen_codes`)
  state       float32 [state_dim]  normalised with the dataset's statistics, zero-padded
  tokens      int32 [L], token_mask bool [L]   `bos + instruction + "\\n"`, right-padded
  training also: actions float32 [chunk, action_dim], action_mask bool [action_dim],
                 action_is_pad bool [chunk] (steps past the episode end repeat the last action)
Offsets before the episode start (or after its end) are clamped to the first (last) frame.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from f1_common import image_tools
from f1_common.export_layout import NORM_STATS_FILE, TOKENIZER_FILE

CAMERAS: tuple[str, ...] = ("primary", "secondary", "wrist")  # every camera slot a dataset may fill
MAX_DIM: int = 32  # states and actions are zero-padded to at most this width
NORM_MODES = ("mean_std", "quantile")
EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """Sizes and frame offsets of the model's inputs (see the module docstring).

    Built from a model config and a recipe's data section by `f1_jax.models.f1.observation_spec`;
    the data pipeline's `DataConfig.observation` is one.
    """

    cameras: tuple[str, ...] = CAMERAS
    und_image_size: int = 224
    gen_camera: str = "primary"
    gen_resize: int = 288
    gen_crop: int = 256
    history_offsets: tuple[int, ...] = (-9, -6, -3, 0)
    target_offsets: tuple[int, ...] = (3,)
    chunk_size: int = 50
    state_dim: int = MAX_DIM
    action_dim: int = MAX_DIM
    max_token_len: int = 48
    # Training batches carry the generation frames as the frozen VQ-VAE's codes, this many per
    # frame (sum(pn^2)); 0: as uint8 frames. Inference always starts from frames.
    frame_codes: int = 0

    def __post_init__(self):
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown or not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(
                f"cameras must be distinct names from {CAMERAS}, got {tuple(self.cameras)}"
            )
        if self.gen_camera not in CAMERAS:
            raise ValueError(f"gen_camera {self.gen_camera!r} not in {CAMERAS}")
        for name in ("state_dim", "action_dim"):
            if not 1 <= getattr(self, name) <= MAX_DIM:
                raise ValueError(f"{name} must be in [1, {MAX_DIM}], got {getattr(self, name)}")
        if self.chunk_size < 1 or self.max_token_len < 1:
            raise ValueError("chunk_size and max_token_len must be >= 1")
        if self.gen_crop > self.gen_resize:
            raise ValueError(f"gen_crop {self.gen_crop} larger than gen_resize {self.gen_resize}")
        if not self.history_offsets or max(self.history_offsets) > 0:
            raise ValueError(f"history_offsets must be <= 0, got {self.history_offsets}")

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> ObservationSpec:
        """From plain fields (JSON, a recipe's data section): sequences become tuples; the fields
        not given keep their defaults."""
        return cls(
            **{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
        )

    @property
    def frame_offsets(self) -> tuple[int, ...]:
        """History then target offsets: the frames of `gen_frames`."""
        return tuple(self.history_offsets) + tuple(self.target_offsets)

    def example_spec(self, training: bool = True) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape (without the batch axis) and dtype of every model input of one example.

        The single description of the batch: the data pipeline builds exactly these keys, the
        trainer derives its abstract batch from it and the model its example batch.
        """
        side, crop = self.und_image_size, self.gen_crop
        frames = len(self.frame_offsets) if training else len(self.history_offsets)
        spec = {
            "images": ((len(self.cameras), side, side, 3), np.dtype(np.uint8)),
            "image_mask": ((len(self.cameras),), np.dtype(bool)),
            "state": ((self.state_dim,), np.dtype(np.float32)),
            "tokens": ((self.max_token_len,), np.dtype(np.int32)),
            "token_mask": ((self.max_token_len,), np.dtype(bool)),
        }
        if training and self.frame_codes:
            spec["gen_codes"] = ((frames, self.frame_codes), np.dtype(np.int32))
        else:
            spec["gen_frames"] = ((frames, crop, crop, 3), np.dtype(np.uint8))
        if training:
            spec["actions"] = ((self.chunk_size, self.action_dim), np.dtype(np.float32))
            spec["action_mask"] = ((self.action_dim,), np.dtype(bool))
            spec["action_is_pad"] = ((self.chunk_size,), np.dtype(bool))
        return spec


# ---------------------------------------------------------------------------------------------
# State and action values.


def normalize(x: np.ndarray, stats: Mapping[str, Any], mode: str = "mean_std") -> np.ndarray:
    """Normalises x [..., D] with per-dim stats of D dims.

    mean_std: (x - mean) / (std + 1e-8); quantile: (x - q01) / (q99 - q01 + 1e-8) * 2 - 1.
    """
    x = np.asarray(x, np.float32)
    if mode == "mean_std":
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        return ((x - mean) / (std + EPS)).astype(np.float32)
    if mode == "quantile":
        lo, hi = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
        return ((x - lo) / (hi - lo + EPS) * 2.0 - 1.0).astype(np.float32)
    raise ValueError(f"unknown norm mode {mode!r}; expected one of {NORM_MODES}")


def unnormalize(y: np.ndarray, stats: Mapping[str, Any], mode: str = "mean_std") -> np.ndarray:
    """Inverse of `normalize` for y [..., D'] with D' >= D: extra (padded) dims are dropped."""
    d = len(stats["mean"])
    y = np.asarray(y, np.float32)[..., :d]
    if mode == "mean_std":
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        return (y * (std + EPS) + mean).astype(np.float32)
    if mode == "quantile":
        lo, hi = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
        return ((y + 1.0) / 2.0 * (hi - lo + EPS) + lo).astype(np.float32)
    raise ValueError(f"unknown norm mode {mode!r}; expected one of {NORM_MODES}")


def actions_to_native(actions: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Un-normalised actions [..., D] back in the robot's own gripper convention.

    A run trained with `gripper_convention="open_is_positive"` records, for each dataset whose
    gripper dims it changed, stats["action_to_native"] = {"dims", "scale", "offset"} with
    native = scale * x + offset; without that entry the actions are returned unchanged.
    """
    to_native = stats.get("action_to_native")
    if not to_native:
        return actions
    out = np.array(actions, np.float32, copy=True)
    for d, scale, offset in zip(to_native["dims"], to_native["scale"], to_native["offset"]):
        out[..., d] = scale * out[..., d] + offset
    return out


def pad_to(x: np.ndarray, dim: int = MAX_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads the last axis of `x` [..., D] to `dim`; returns (padded f32, mask bool [dim])."""
    d = x.shape[-1]
    if d > dim:
        raise ValueError(f"cannot pad last dim {d} down to {dim}")
    out = np.zeros(x.shape[:-1] + (dim,), np.float32)
    out[..., :d] = x
    mask = np.zeros((dim,), bool)
    mask[:d] = True
    return out, mask


def state_input(state: np.ndarray, stats: Mapping[str, Any], mode: str, dim: int) -> np.ndarray:
    """Raw state [Ds] (robot units) -> normalised, zero-padded float32 [dim]."""
    state = np.asarray(state, np.float32).reshape(-1)
    expected = len(stats["mean"])
    if state.shape[0] != expected:
        raise ValueError(
            f"state has {state.shape[0]} dims; the training statistics have {expected}"
        )
    return pad_to(normalize(state, stats, mode), dim)[0]


# ---------------------------------------------------------------------------------------------
# Time windows.


def frame_indices(t: int, length: int, offsets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices t+offset clamped to [0, length-1] and an is_pad mask for clamped ones.

    Returns (indices int32 [len(offsets)], is_pad bool [len(offsets)]).
    """
    if length <= 0:
        raise ValueError(f"episode length must be positive, got {length}")
    raw = t + np.asarray(offsets, np.int64)
    idx = np.clip(raw, 0, length - 1).astype(np.int32)
    return idx, (raw < 0) | (raw >= length)


def action_chunk(actions: np.ndarray, t: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions t..t+chunk-1 of `actions` [T, D]; steps past the end repeat the last action.

    Returns (chunk [chunk, D], is_pad bool [chunk]) with is_pad True past the episode end.
    """
    idx, is_pad = frame_indices(t, len(actions), range(chunk))
    return actions[idx], is_pad


# ---------------------------------------------------------------------------------------------
# Cameras.


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
    frames: Mapping[str, np.ndarray],
    spec: ObservationSpec,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [C, S, S, 3] in `spec.cameras` order (zeros where absent) and the present mask [C].

    frames: standard camera name -> uint8 [H, W, 3]; cameras the model has no slot for are unused.
    augment: applied to each resized image (the training pipeline's colour augmentation).
    """
    size = spec.und_image_size
    images = np.zeros((len(spec.cameras), size, size, 3), np.uint8)
    present = np.array([c in frames for c in spec.cameras])
    for k, cam in enumerate(spec.cameras):
        if present[k]:
            image = image_tools.resize_with_pad(frames[cam], size, size)
            images[k] = augment(image) if augment is not None else image
    return images, present


def generation_crop_origin(
    frame_shape: tuple[int, int], spec: ObservationSpec, rng: np.random.Generator | None = None
) -> tuple[int, int]:
    """Top-left corner of the generation crop in a frame of `frame_shape` (h, w) after the
    short-side resize: uniform with `rng` (training), centred without (evaluation, inference)."""
    shape = image_tools.short_side_shape(frame_shape, spec.gen_resize)
    return image_tools.crop_origin(shape, spec.gen_crop, rng)


def generation_crop(
    frame: np.ndarray, spec: ObservationSpec, origin: tuple[int, int] | None = None
) -> np.ndarray:
    """One generation-camera frame -> uint8 [gen_crop, gen_crop, 3]: short side to `gen_resize`,
    then the crop at `origin` (default centred)."""
    if origin is None:
        origin = generation_crop_origin(frame.shape[:2], spec)
    return image_tools.resize_short_side_and_crop(frame, spec.gen_resize, spec.gen_crop, origin)


class FrameHistory:
    """Generation-camera crops of the current episode, for offsets like (-9, -6, -3, 0).

    Offsets before the episode start are clamped to its first frame, exactly as training's
    `frame_indices` clamps them (the current frame is always the last one pushed). `window()`
    also returns each returned frame's index in the episode, so callers can key per-frame work
    (the frame-code cache) on it.
    """

    def __init__(self, offsets: Sequence[int]):
        if max(offsets) > 0:
            raise ValueError(f"history offsets must be <= 0, got {tuple(offsets)}")
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

    def hold(self, steps: int) -> None:
        """Counts `steps` environment steps whose frames were not seen, standing in the newest
        frame for each (a client that executes a whole chunk between two observations)."""
        if self.count == 0:
            raise RuntimeError("no frame pushed yet")
        for _ in range(steps):
            self.push(self._frames[-1])

    def snapshot(self) -> tuple:
        """The episode state, for `restore` (a request that failed leaves no trace)."""
        return (tuple(self._frames), self._first, self.count)

    def restore(self, state: tuple) -> None:
        frames, self._first, self.count = state
        self._frames.clear()
        self._frames.extend(frames)

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [len(offsets), h, w, 3] (oldest first) and the frames' episode indices int32."""
        if self.count == 0:
            raise RuntimeError("no frame pushed yet")
        t = self.count - 1
        idx, _ = frame_indices(t, self.count, self.offsets)
        # The deque holds frames t-len+1 .. t; clamped indices are >= t-len+1 or 0 (the first).
        oldest = t - len(self._frames) + 1
        out = [self._first if i < oldest else self._frames[i - oldest] for i in idx.tolist()]
        return np.stack(out), idx


def foresight_to_uint8(image: np.ndarray) -> np.ndarray:
    """[..., h, w, 3] in [-1, 1] -> uint8 (the same mapping as the training loop's pictures)."""
    return np.clip((np.asarray(image, np.float32) + 1) * 127.5, 0, 255).astype(np.uint8)


class ObservationTransform:
    """A robot's observations -> model examples, episode by episode; model actions -> robot units.

    What `inference.jax_policy.Policy`, the policy server and the PyTorch runtime run on every control
    step, with the same functions the training pipeline uses (in eval mode: no colour
    augmentation, centred generation crops).

    cameras: standard camera -> the dataset's image key (None = absent); observations may name a
      camera either way. stats: the dataset's entry of the run's statistics ({"state", "action",
      "norm_mode"}). tokenizer: anything with `encode(text) -> (tokens, mask)`.
    """

    def __init__(
        self,
        spec: ObservationSpec,
        cameras: Mapping[str, str | None],
        stats: Mapping[str, Any],
        tokenizer,
    ):
        self.spec = spec
        self.cameras = dict(cameras)
        self.stats = stats
        self.tokenizer = tokenizer
        self.history = FrameHistory(spec.history_offsets)
        self.action_dim = len(stats["action"]["mean"])
        self.state_width = len(stats["state"]["mean"])
        self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        """Starts a new episode: forgets the generation camera's frame history."""
        self.history.reset()

    def metadata(self) -> dict[str, Any]:
        """What a client must send and what it gets back (the policy server sends it on
        connect): camera keys, state and action widths, chunk size, history offsets."""
        spec = self.spec
        return {
            "cameras": {k: v for k, v in self.cameras.items() if v},
            "state_dim": self.state_width,
            "action_dim": self.action_dim,
            "chunk_size": spec.chunk_size,
            "history_offsets": list(spec.history_offsets),
            "observation_keys": sorted(
                {"state", "instruction", *CAMERAS} | {v for v in self.cameras.values() if v}
            ),
        }

    def observe(self, observation: Mapping[str, Any]) -> None:
        """Records a step's generation frame without building an example (steps executed
        open-loop from a chunk still enter the history, whose offsets count environment steps)."""
        frames = camera_frames(observation, self.cameras)
        if self.spec.gen_camera in frames:
            self.history.push(generation_crop(frames[self.spec.gen_camera], self.spec))

    def _encode(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        if instruction not in self._tokens:
            self._tokens[instruction] = self.tokenizer.encode(instruction)
        return self._tokens[instruction]

    def __call__(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One observation -> one example (`spec.example_spec(training=False)` keys) plus
        "frame_index" int32 [H], the episode index of each history frame (-1: no generation
        camera). Pushes the current generation frame into the history: call it (or `observe`)
        once per environment step."""
        spec = self.spec
        if "instruction" not in observation or "state" not in observation:
            raise KeyError(
                f"observation needs 'state' and 'instruction'; keys: {sorted(observation)}"
            )
        frames = camera_frames(observation, self.cameras)
        images, present = understanding_images(frames, spec)
        # Everything that can reject the observation runs before the history is touched.
        tokens, token_mask = self._encode(str(observation["instruction"]))
        state = state_input(
            observation["state"], self.stats["state"], self.stats["norm_mode"], spec.state_dim
        )
        if spec.gen_camera in frames:
            self.history.push(generation_crop(frames[spec.gen_camera], spec))
            gen, frame_index = self.history.window()
        else:  # like training: a dataset without the generation camera gets blank frames
            n = len(spec.history_offsets)
            gen = np.zeros((n, spec.gen_crop, spec.gen_crop, 3), np.uint8)
            frame_index = np.full(n, -1, np.int32)
        return {
            "images": images,
            "image_mask": present,
            "gen_frames": gen,
            "state": state,
            "tokens": tokens,
            "token_mask": token_mask,
            "frame_index": frame_index,
        }

    def robot_actions(self, actions: np.ndarray) -> np.ndarray:
        """Normalised model actions [..., action_dim] -> robot units [..., dataset's dims], in
        the dataset's own gripper convention."""
        raw = unnormalize(actions, self.stats["action"], self.stats["norm_mode"])
        return actions_to_native(raw, self.stats)


# ---------------------------------------------------------------------------------------------
# What travels with an exported model: `norm_stats.json` beside the weights.

NORM_STATS_FORMAT = "f1_jax.norm_stats/1"


@dataclasses.dataclass(frozen=True)
class DeploymentContract:
    """Everything besides the weights that turns robot observations into model inputs and model
    actions into robot units: the observation spec, each dataset's statistics, norm mode and
    camera keys, and the tokenizer. Written as `norm_stats.json` (+ `tokenizer.model`) beside an
    exported model; the JAX policy, the server and the PyTorch runtime read it.

    datasets: name -> {"state": stats, "action": stats, "norm_mode": "mean_std" | "quantile",
      "cameras": {standard camera: dataset image key or None}, optionally "action_to_native"
      (see `actions_to_native`)}; stats are per-dimension lists "mean", "std", "q01", "q99",
      "min", "max" and a "count" (data_pipelines.statistics).
    """

    spec: ObservationSpec
    datasets: Mapping[str, Mapping[str, Any]]
    default_dataset: str
    tokenizer_path: str
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def dataset(self, name: str | None = None) -> Mapping[str, Any]:
        name = name or self.default_dataset
        if name not in self.datasets:
            raise KeyError(
                f"Unknown dataset {name!r}; statistics exist for {sorted(self.datasets)}."
            )
        return self.datasets[name]

    def transform(self, tokenizer, dataset: str | None = None) -> "ObservationTransform":
        """The observation transform for `dataset` (default: the default dataset)."""
        entry = self.dataset(dataset)
        return ObservationTransform(self.spec, entry["cameras"], entry, tokenizer)

    def to_json(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self.spec)
        return {
            "format": NORM_STATS_FORMAT,
            "observation": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
            "default_dataset": self.default_dataset,
            "datasets": {k: dict(v) for k, v in self.datasets.items()},
            "tokenizer": TOKENIZER_FILE,
            "source": dict(self.source),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: str) -> "DeploymentContract":
        if data.get("format") != NORM_STATS_FORMAT:
            raise ValueError(
                f"{directory}/{NORM_STATS_FILE} has format {data.get('format')!r}, "
                f"expected {NORM_STATS_FORMAT!r}."
            )
        return cls(
            spec=ObservationSpec.from_mapping(data["observation"]),
            datasets=data["datasets"],
            default_dataset=data["default_dataset"],
            tokenizer_path=f"{directory}/{data.get('tokenizer', TOKENIZER_FILE)}",
            source=data.get("source", {}),
        )


def read_deployment_contract(directory: str) -> DeploymentContract:
    """The `norm_stats.json` of an exported model directory (local)."""
    path = f"{directory}/{NORM_STATS_FILE}"
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{directory} has no {NORM_STATS_FILE}: export a run with "
            "`python -m conversion export --run WORKDIR --output DIR`."
        ) from None
    return DeploymentContract.from_json(data, directory)
