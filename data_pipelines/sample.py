"""Builds one training example from (dataset, episode, step) with the observation contract's
functions (`f1_jax.transforms`): the same code turns a robot's observation into model inputs at
inference."""

from __future__ import annotations

import collections
import threading
from typing import Any, Sequence

import numpy as np

from data_pipelines import schema
from data_pipelines.config import DataConfig
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import get_source
from data_pipelines.summary import DatasetSummary
from f1_jax import image_tools, transforms
from f1_jax.tokenizer import Tokenizer


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
        self.tokenizer = Tokenizer(config.tokenizer_path, config.max_token_len)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()  # grain reads with several threads per process

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        state["_cache"] = collections.OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def episode(self, d: int, record: int) -> schema.StdEpisode:
        key = (d, record)
        with self._lock:
            ep = self._cache.get(key)
            if ep is not None:
                self._cache.move_to_end(key)
                return ep
        ds = self.config.datasets[d]
        ep = get_source(ds.source).standardize(
            self.readers[d].decode(record), ds.name, record, ds.cameras
        )
        with self._lock:
            self._cache[key] = ep
            while len(self._cache) > self.config.episode_cache_size:
                self._cache.popitem(last=False)
        return ep

    def __call__(self, item: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        cfg, spec = self.config, self.config.observation
        d, record, t = (int(v) for v in item)
        ep = self.episode(d, record)
        summary = self.summaries[d]
        mode = cfg.datasets[d].norm_mode or cfg.norm_mode
        decoded: dict[tuple[str, int], np.ndarray] = {}

        def frame(cam: str, i: int) -> np.ndarray:
            if (cam, i) not in decoded:
                decoded[(cam, i)] = image_tools.decode_image(ep.images[cam][i])
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
        crop = spec.gen_crop
        gen = np.zeros((len(idx), crop, crop, 3), np.uint8)
        if spec.gen_camera in ep.images:
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
            "gen_frames": gen,
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
