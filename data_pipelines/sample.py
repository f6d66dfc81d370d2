"""Builds one training example from (dataset, episode, step) with the observation contract's
functions (`f1_common.transforms`): the same code turns a robot's observation into model inputs at
inference.

A bad sample (its record fails its checksum or cannot be parsed at read time, or one of its images
cannot be decoded) is replaced by a deterministic other sample of the same dataset: the
replacement depends only on the bad item, so the example at global position i still depends only
on (seed, i). The example's `replaced` field says which item was bad and why, so the host can
count and name it (`pipeline.IntegrityMonitor`).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Sequence

import numpy as np

from data_pipelines import schema
from data_pipelines.config import DataConfig
from data_pipelines.frame_codes import FrameCodeStore
from data_pipelines.integrity import BadImageError, CorruptRecordError, DataIntegrityError
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import for_dataset, standardize_record
from data_pipelines.summary import DatasetSummary
from f1_common import image_tools, transforms
from f1_common.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# `replaced` reason codes: (bad record, bad step, reason); (-1, -1, 0) for an original sample.
NOT_REPLACED, BAD_RECORD, BAD_IMAGE = 0, 1, 2
REPLACEMENT_TRIES = 16  # draws of a replacement before the sample is declared unrecoverable

# Exceptions PIL raises for undecodable image bytes (truncated, garbage, unknown format).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class SampleBuilder:
    """Callable `(item, rng) -> example dict` for grain's random_map.

    item: int64 [3] = (dataset index, record index, step t). Keeps a small per-process LRU cache
    of standardised episodes (consecutive samples often come from the same episode when shuffling
    is off, e.g. evaluation).
    """

    def __init__(
        self,
        config: DataConfig,
        readers: Sequence[EpisodeReader],
        summaries: Sequence[DatasetSummary],
    ):
        self.config = config
        self.readers = list(readers)
        self.summaries = list(summaries)
        self.tokenizer = Tokenizer(config.tokenizer_path, config.observation.max_token_len)
        # Drawable [lo, hi) per record (replacements come from these).
        self._ranges = [
            s.sampling_ranges(config.drop_unlabeled_for(d)) for d, s in enumerate(self.summaries)
        ]
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._bad: dict[tuple[int, int], Exception] = {}  # records found bad in this process
        self._reported: set[tuple[int, int, int]] = set()  # (d, record, code) logged here
        self._lock = threading.Lock()  # grain reads with several threads per process
        self._stores: list[FrameCodeStore] | None = None  # opened on first use, per process

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        state["_stores"] = None
        state["_cache"] = collections.OrderedDict()
        state["_bad"] = {}
        state["_reported"] = set()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def episode(self, d: int, record: int) -> schema.StdEpisode:
        """The standardised episode of record `record` of dataset `d` (raises
        CorruptRecordError if it fails its checksum or cannot be parsed)."""
        key = (d, record)
        with self._lock:
            ep = self._cache.get(key)
            if ep is not None:
                self._cache.move_to_end(key)
                return ep
            bad = self._bad.get(key)
        if bad is not None:  # the outcome of reading it again would be the same
            raise bad
        ds = self.config.datasets[d]
        try:
            ep = standardize_record(
                for_dataset(ds),
                self.readers[d].decode(record),
                ds.name,
                record,
                ds.cameras,
                self.config.gripper_convention,
                ds.lerobot,
            )
        except (CorruptRecordError, schema.SchemaError) as e:
            err = (
                e
                if isinstance(e, CorruptRecordError)
                else CorruptRecordError(f"{self.readers[d].where(record)}: {e}", reason=str(e))
            )
            with self._lock:
                self._bad[key] = err
            raise err from e
        with self._lock:
            self._cache[key] = ep
            while len(self._cache) > self.config.episode_cache_size:
                self._cache.popitem(last=False)
        return ep

    def __call__(self, item: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        d, record, t = (int(v) for v in item)
        start = rng.bit_generator.state
        try:
            example = self.build(d, record, t, rng)
            example["replaced"] = np.array([-1, -1, NOT_REPLACED], np.int32)
            return example
        except (CorruptRecordError, BadImageError) as e:
            first = e
        code = BAD_RECORD if isinstance(first, CorruptRecordError) else BAD_IMAGE
        name = self.config.datasets[d].name
        self._report(d, record, code, first)
        ranges = self._ranges[d]
        usable = np.flatnonzero(ranges[:, 1] > ranges[:, 0])
        usable = usable[usable != record] if code == BAD_RECORD else usable
        for attempt in range(REPLACEMENT_TRIES if len(usable) else 0):
            # Depends only on the bad item and the data, never on what this process saw before.
            g = np.random.default_rng([d, record, t, attempt])
            r = int(usable[g.integers(len(usable))])
            t2 = int(g.integers(ranges[r, 0], ranges[r, 1]))
            rng.bit_generator.state = start  # the replacement gets the draws the original had
            try:
                example = self.build(d, r, t2, rng)
            except (CorruptRecordError, BadImageError) as e:
                self._report(
                    d, r, BAD_RECORD if isinstance(e, CorruptRecordError) else BAD_IMAGE, e
                )
                continue
            example["replaced"] = np.array([record, t, code], np.int32)
            return example
        raise DataIntegrityError(
            f"dataset {name!r}: bad sample ({first}) and {REPLACEMENT_TRIES} replacement draws "
            "failed too; the dataset is too damaged to sample"
        )

    def _report(self, d: int, record: int, code: int, error: Exception) -> None:
        """Logs the full reason once per record and process (the host's IntegrityMonitor counts
        and names every replaced sample; worker logs add the detail, e.g. the camera)."""
        key = (d, record, code)
        if key not in self._reported:
            self._reported.add(key)
            log.warning(
                "bad sample of dataset %r replaced: %s", self.config.datasets[d].name, error
            )

    def _frame_codes(self, d: int, record: int, idx: np.ndarray, has_camera: bool) -> np.ndarray:
        """int32 [F, L]: the stored codes of the sample's generation frames (centred crops), or
        the all-black frame's codes for a dataset without the generation camera."""
        if self._stores is None:
            self._stores = [FrameCodeStore(p) for p in self.config.frame_code_stores]
        store = self._stores[d]
        if not has_camera:
            return np.tile(store.blank, (len(idx), 1))
        return store.frames(record, idx)

    def build(self, d: int, record: int, t: int, rng: np.random.Generator) -> dict[str, Any]:
        """The example at step t of record `record` of dataset d (no replacement)."""
        cfg, spec = self.config, self.config.observation
        ep = self.episode(d, record)
        summary = self.summaries[d]
        mode = cfg.datasets[d].norm_mode or cfg.norm_mode
        decoded: dict[tuple[str, int], np.ndarray] = {}

        def frame(cam: str, i: int) -> np.ndarray:
            if (cam, i) not in decoded:
                try:
                    decoded[(cam, i)] = schema.decode_frame(ep.images[cam][i])
                except _IMAGE_ERRORS as e:
                    raise BadImageError(
                        f"{self.readers[d].where(record)}, step {i}, camera {cam}: cannot decode "
                        f"image ({type(e).__name__}: {e})"
                    ) from e
            return decoded[(cam, i)]

        def augment(image: np.ndarray) -> np.ndarray:
            return image_tools.color_augment(
                image, rng, cfg.brightness, cfg.contrast, cfg.saturation
            )

        # Understanding cameras at t, resized with padding, colour-augmented in training.
        und, present = transforms.understanding_images(
            {cam: frame(cam, t) for cam in spec.cameras if cam in ep.images},
            spec,
            augment if cfg.train and cfg.color_augment else None,
        )

        # Generation history + target frames: one crop shared by all frames of the sample.
        idx, _ = transforms.frame_indices(t, ep.length, spec.frame_offsets)
        if spec.frame_codes:
            gen = self._frame_codes(d, record, idx, spec.gen_camera in ep.images)
        else:
            gen = np.zeros((len(idx), spec.gen_crop, spec.gen_crop, 3), np.uint8)
        if not spec.frame_codes and spec.gen_camera in ep.images:
            origin = transforms.generation_crop_origin(
                frame(spec.gen_camera, int(idx[0])).shape[:2], spec, rng if cfg.train else None
            )
            done: dict[int, np.ndarray] = {}
            for k, i in enumerate(idx.tolist()):
                if i not in done:  # clamped offsets repeat frames near the episode bounds
                    done[i] = transforms.generation_crop(frame(spec.gen_camera, i), spec, origin)
                gen[k] = done[i]

        state, _ = transforms.pad_to(
            transforms.normalize(ep.state[t], summary.state_stats, mode), spec.state_dim
        )
        chunk, action_pad = transforms.action_chunk(ep.action, t, spec.chunk_size)
        actions, action_mask = transforms.pad_to(
            transforms.normalize(chunk, summary.action_stats, mode), spec.action_dim
        )
        tokens, token_mask = self.tokenizer.encode(ep.language)
        return {
            "images": und,
            "image_mask": present,
            "gen_codes" if spec.frame_codes else "gen_frames": gen,
            "state": state,
            "actions": actions,
            "action_mask": action_mask,
            "action_is_pad": action_pad,
            "tokens": tokens,
            "token_mask": token_mask,
            "dataset_index": np.int32(d),
            "episode_index": np.int32(record),
            "step_index": np.int32(t),
        }
