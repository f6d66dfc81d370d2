"""A dataset's generation-camera frames as the frozen VQ-VAE's multi-scale codes, stored once.

The VQ-VAE never trains after its own stage, so the codes of a frame never change: with
`DataConfig.frame_codes`, the pipeline ships each sample's history and target frames as codes
(int32 [F, L], L = sum(pn^2) = 680 at full size) instead of uint8 frames, and the train step
skips the VQ-VAE and the frames' decoding. Codes are those of the centred generation crop (the
original's random crop of the 288 px frame would need one set of codes per crop position).

A store is a directory (`f1_frame_codes_<key>/`): `codes.npy` int16 [frames, L] (read memory-mapped)
and `index.json` ({"records": [[offset, length] per record], "blank": codes of an all-black
frame, for datasets without the generation camera, and what produced it}). The key covers the
VQ-VAE's weights, the crop and the dataset's content, so any change makes a new store.
`f1_jax.training.frame_codes` writes stores (it needs the model); this module only reads them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import numpy as np

from data_pipelines import statistics

CODES_FILE, INDEX_FILE = "codes.npy", "index.json"


def store_path(dataset_dir: str, key: str, stats_dir: str | None = None) -> str:
    """Where the store of `key` lives: beside the dataset's statistics cache."""
    return os.path.join(statistics.cache_dir(dataset_dir, stats_dir), f"f1_frame_codes_{key}")


class FrameCodeStore:
    """Read-only access to one dataset's stored frame codes. Picklable (opened lazily)."""

    def __init__(self, directory: str):
        index_path = os.path.join(directory, INDEX_FILE)
        if not os.path.exists(index_path):
            raise FileNotFoundError(
                f"no frame-code store at {directory} (index.json missing); the trainer writes it "
                "before training when data.frame_codes is on"
            )
        with open(index_path) as f:
            index = json.load(f)
        self.directory = directory
        self.records = np.asarray(index["records"], np.int64).reshape(-1, 2)
        self.blank = np.asarray(index["blank"], np.int32)
        self.meta: dict[str, Any] = index.get("meta", {})
        self._codes = None

    def __getstate__(self):
        return {**self.__dict__, "_codes": None}

    @property
    def codes(self) -> np.ndarray:
        if self._codes is None:
            self._codes = np.load(os.path.join(self.directory, CODES_FILE), mmap_mode="r")
        return self._codes

    def frames(self, record: int, indices: np.ndarray) -> np.ndarray:
        """int32 [len(indices), L]: the codes of frames `indices` of record `record`."""
        offset, length = self.records[record]
        if length == 0:
            raise KeyError(f"{self.directory}: record {record} has no stored frames")
        if np.any(indices >= length):
            raise IndexError(
                f"{self.directory}: record {record} has {length} frames, not {indices}"
            )
        return np.asarray(self.codes[offset + indices], np.int32)


def write_store(
    directory: str,
    num_records: int,
    records: Iterable[tuple[int, np.ndarray]],
    blank: np.ndarray,
    meta: dict[str, Any],
) -> str:
    """Writes a store from (record, codes int [T, L]) pairs; records never given have no frames.

    Atomic: written beside `directory` and renamed into place, so a reader never sees half of one.
    """
    tmp = f"{directory}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    spans = np.zeros((num_records, 2), np.int64)
    chunks, offset = [], 0
    for record, codes in records:
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"record {record}: codes must be [T, L], got {codes.shape}")
        if codes.max(initial=0) > np.iinfo(np.int16).max:
            raise ValueError(f"record {record}: code {codes.max()} does not fit int16")
        spans[record] = (offset, len(codes))
        chunks.append(codes.astype(np.int16))
        offset += len(codes)
    width = len(blank)
    stacked = np.concatenate(chunks) if chunks else np.zeros((0, width), np.int16)
    np.save(os.path.join(tmp, CODES_FILE), stacked)
    with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump({"records": spans.tolist(), "blank": np.asarray(blank).tolist(), "meta": meta}, f)
    if os.path.exists(directory):  # another host finished first: theirs is the same content
        _remove(tmp)
        return directory
    os.replace(tmp, directory)
    return directory


def _remove(path: str) -> None:
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))
    os.rmdir(path)
