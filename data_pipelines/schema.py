"""The standard per-episode / per-step schema every source maps its dataset into.

A source turns one decoded RLDS episode into a `StdEpisode`: named cameras (JPEG bytes per step,
or absent), state and action in the dataset's own units and dimensions, one instruction, ids.
Padding to `MAX_DIM` happens after normalisation, so statistics are computed on real dims only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from f1_common.transforms import CAMERAS, MAX_DIM, pad_to


class SchemaError(ValueError):
    """A decoded episode does not match what its source expects."""


class EmptyEpisodeError(SchemaError):
    """A readable episode with no steps (counted as `zero_steps`, not as corrupt)."""


@dataclasses.dataclass(frozen=True)
class StdEpisode:
    """One episode in the standard schema.

    images: camera name (one of CAMERAS) -> object array [T] of encoded image bytes; cameras the
      dataset does not have are absent from the dict.
    state: float32 [T, Ds]; action: float32 [T, Da] (dataset units, Ds, Da <= MAX_DIM).
    sample_range: [start, end) steps that may be drawn as the current step t (segment records of
      long episodes carry context frames outside this range).
    """

    dataset_name: str
    episode_id: int
    images: Mapping[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    language: str
    sample_range: tuple[int, int]

    def __post_init__(self):
        t = len(self.state)
        if self.state.ndim != 2 or self.action.ndim != 2 or len(self.action) != t:
            raise SchemaError(
                f"{self.dataset_name}/{self.episode_id}: state {self.state.shape} and action "
                f"{self.action.shape} must be [T, D] with the same T"
            )
        for name, frames in self.images.items():
            if name not in CAMERAS:
                raise SchemaError(f"unknown camera {name!r}; expected one of {CAMERAS}")
            if len(frames) != t:
                raise SchemaError(f"camera {name!r} has {len(frames)} frames for {t} steps")
        if max(self.state.shape[1], self.action.shape[1]) > MAX_DIM:
            raise SchemaError(f"state/action dims exceed {MAX_DIM}")
        lo, hi = self.sample_range
        if not 0 <= lo <= hi <= t:
            raise SchemaError(f"sample_range {self.sample_range} outside [0, {t}]")

    @property
    def length(self) -> int:
        return len(self.state)


def step_record(ep: StdEpisode, t: int) -> dict[str, Any]:
    """The standard per-step view of step `t` (raw units, padded to MAX_DIM, masks included)."""
    state, state_mask = pad_to(ep.state[t])
    action, action_mask = pad_to(ep.action[t])
    images = {c: (ep.images[c][t] if c in ep.images else b"") for c in CAMERAS}
    return {
        "dataset_name": ep.dataset_name,
        "episode_id": ep.episode_id,
        "step_id": t,
        "images": images,
        "image_mask": np.array([c in ep.images for c in CAMERAS]),
        "state": state,
        "state_mask": state_mask,
        "action": action,
        "action_mask": action_mask,
        "language_instruction": ep.language,
    }


def as_text(x: Any) -> str:
    """Decodes TFDS Text values (bytes, numpy bytes, str) to str."""
    if isinstance(x, np.ndarray):
        x = x.item() if x.ndim == 0 else x[0]
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def stack_steps(steps: Any) -> dict[str, Any]:
    """Turns a sequence of nested per-step dicts into a nested dict of stacked arrays [T, ...].

    Bytes (encoded images, text) become object arrays so they are never copied or decoded here.
    """
    steps = [steps[i] for i in range(len(steps))]
    if not steps:
        raise EmptyEpisodeError("episode has no steps")

    def _stack(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: _stack([v[k] for v in values]) for k in first}
        if isinstance(first, (bytes, np.bytes_, str)):
            out = np.empty(len(values), object)
            out[:] = values
            return out
        return np.stack([np.asarray(v) for v in values])

    return _stack(steps)


def select_cameras(
    observation: Mapping[str, Any], cameras: Mapping[str, str | None]
) -> dict[str, np.ndarray]:
    """Maps standard camera names to dataset image keys; None or missing mapping = camera absent."""
    images = {}
    for std_name, key in cameras.items():
        if key is None:
            continue
        if key not in observation:
            raise SchemaError(
                f"camera {std_name!r} maps to {key!r}, not in observation keys "
                f"{sorted(observation)}"
            )
        images[std_name] = observation[key]
    return images
