"""Builds one training example from (dataset, episode, step): windows, images, tokens, norm."""

from __future__ import annotations

import collections
import threading
from typing import Any, Sequence

import numpy as np

from data_pipelines import images, normalize, schema, windows
from data_pipelines.config import DataConfig
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import get_source
from data_pipelines.summary import DatasetSummary
from data_pipelines.tokenizer import Tokenizer


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
        cfg = self.config
        d, record, t = (int(v) for v in item)
        ep = self.episode(d, record)
        summary = self.summaries[d]
        mode = cfg.datasets[d].norm_mode or cfg.norm_mode
        decoded: dict[tuple[str, int], np.ndarray] = {}

        def frame(cam: str, i: int) -> np.ndarray:
            if (cam, i) not in decoded:
                decoded[(cam, i)] = images.decode_image(ep.images[cam][i])
            return decoded[(cam, i)]

        # Understanding cameras at t, resized with padding, colour-augmented in training.
        size = cfg.und_image_size
        und = np.zeros((len(schema.CAMERAS), size, size, 3), np.uint8)
        present = np.array([c in ep.images for c in schema.CAMERAS])
        for k, cam in enumerate(schema.CAMERAS):
            if present[k]:
                img = images.resize_with_pad(frame(cam, t), size, size)
                if cfg.train and cfg.color_augment:
                    img = images.color_augment(
                        img, rng, cfg.brightness, cfg.contrast, cfg.saturation
                    )
                und[k] = img

        # Generation history + target frames: one crop shared by all frames of the sample.
        offsets = cfg.frame_offsets
        idx, frame_pad = windows.frame_indices(t, ep.length, offsets)
        crop = cfg.gen_crop
        gen = np.zeros((len(offsets), crop, crop, 3), np.uint8)
        if cfg.gen_camera in ep.images:
            first = frame(cfg.gen_camera, int(idx[0]))
            shape = images.short_side_shape(first.shape[:2], cfg.gen_resize)
            origin = images.crop_origin(shape, crop, rng if cfg.train else None)
            done: dict[int, np.ndarray] = {}
            for k, i in enumerate(idx.tolist()):
                if i not in done:  # clamped offsets repeat frames near the episode bounds
                    done[i] = images.resize_short_side_and_crop(
                        frame(cfg.gen_camera, i), cfg.gen_resize, crop, origin
                    )
                gen[k] = done[i]
        else:
            frame_pad = np.ones(len(offsets), bool)

        state, state_mask = schema.pad_to(
            normalize.normalize(ep.state[t], summary.state_stats, mode), cfg.state_dim
        )
        chunk, action_pad = windows.action_chunk(ep.action, t, cfg.chunk_size)
        actions, action_mask = schema.pad_to(
            normalize.normalize(chunk, summary.action_stats, mode), cfg.action_dim
        )
        tokens, token_mask = self.tokenizer.encode(ep.language)
        return {
            "images": und,
            "image_mask": present,
            "gen_frames": gen,
            "gen_frames_is_pad": frame_pad,
            "state": state,
            "state_mask": state_mask,
            "actions": actions,
            "action_mask": action_mask,
            "action_is_pad": action_pad,
            "tokens": tokens,
            "token_mask": token_mask,
            "dataset_index": np.int32(d),
            "episode_index": np.int32(record),
            "step_index": np.int32(t),
        }
