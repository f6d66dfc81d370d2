"""Encodes a run's datasets to frame-code stores once, so the train step needs no VQ-VAE.

With `data.frame_codes`, the trainer calls `ensure_frame_codes` before it builds its data
iterators: every generation-camera frame of every dataset is centre-cropped as the observation
contract crops it, encoded by the run's own frozen VQ-VAE and stored (`data_pipelines.frame_codes`).
A store's key covers the VQ-VAE's weights, the crop and the dataset's content, so a store is
reused exactly when it would hold the same codes. Process 0 writes; the others wait for it.
"""

import dataclasses
import hashlib
import logging
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from data_pipelines import DataConfig
from data_pipelines.frame_codes import FrameCodeStore, store_path, write_store
from data_pipelines.pipeline import load_summaries
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import standardize_record
from data_pipelines.summary import DatasetSummary
from f1_common import image_tools, transforms
from f1_jax.models.f1 import F1, to_unit_range

log = logging.getLogger("f1_jax")

STORE_FORMAT = "frame-codes-v1"


def vqvae_fingerprint(vqvae_params: Any) -> str:
    """sha256 (16 hex) of the VQ-VAE's parameter values, in path order."""
    h = hashlib.sha256()
    for path, value in sorted(flatten_dict(jax.device_get(vqvae_params)).items()):
        h.update("/".join(path).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:16]


def store_key(summary: DatasetSummary, spec: transforms.ObservationSpec, vqvae: str) -> str:
    """What a store's codes depend on: the dataset's content and transform (its summary key),
    the generation camera and crop, and the VQ-VAE's weights."""
    parts = (STORE_FORMAT, summary.key, spec.gen_camera, spec.gen_resize, spec.gen_crop, vqvae)
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def codes_function(model: F1):
    """A jitted (vqvae params, uint8 frames [N, c, c, 3]) -> int32 codes [N, L]."""

    def codes(vqvae_params: Any, frames: jax.Array) -> jax.Array:
        x = to_unit_range(frames)[:, None]
        out = model.apply({"params": {"vqvae": vqvae_params}}, x, method=F1.frame_codes)
        return out[:, 0]

    return jax.jit(codes)


def encode_dataset(
    encode,
    vqvae_params: Any,
    reader: EpisodeReader,
    summary: DatasetSummary,
    ds,
    spec: transforms.ObservationSpec,
    batch_size: int = 256,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """(record, codes [T, L]) of every usable record that has the generation camera, encoding
    `batch_size` frames per call across records (one compiled program: the last batch is
    padded)."""
    pending: list[tuple[int, list[np.ndarray]]] = []  # records whose frames wait for a batch
    waiting = 0

    def flush() -> Iterator[tuple[int, np.ndarray]]:
        frames = [f for _, record_frames in pending for f in record_frames]
        codes = []
        for start in range(0, len(frames), batch_size):
            chunk = np.stack(frames[start : start + batch_size])
            padded = np.zeros((batch_size, *chunk.shape[1:]), chunk.dtype)
            padded[: len(chunk)] = chunk
            codes.append(np.asarray(encode(vqvae_params, jnp.asarray(padded)))[: len(chunk)])
        codes = np.concatenate(codes)
        offset = 0
        for record, record_frames in pending:
            yield record, codes[offset : offset + len(record_frames)]
            offset += len(record_frames)

    usable = np.flatnonzero(summary.lengths > 0)
    for record in tqdm.tqdm(usable, desc=f"frame codes {ds.name}", disable=not progress):
        raw = reader.decode(int(record))
        episode = standardize_record(ds.source, raw, ds.name, int(record), ds.cameras)
        if spec.gen_camera not in episode.images:
            continue
        frames = [
            transforms.generation_crop(image_tools.decode_image(data), spec)
            for data in episode.images[spec.gen_camera]
        ]
        pending.append((int(record), frames))
        waiting += len(frames)
        if waiting >= batch_size:
            yield from flush()
            pending, waiting = [], 0
    if pending:
        yield from flush()


def ensure_frame_codes(
    config: DataConfig, model: F1, vqvae_params: Any, progress: bool = True
) -> DataConfig:
    """`config` with `frame_code_stores` set, writing the stores that do not exist yet."""
    spec = config.observation
    readers, summaries = load_summaries(config, progress=False)
    fingerprint = vqvae_fingerprint(vqvae_params)
    encode = codes_function(model)
    blank_frame = np.zeros((1, spec.gen_crop, spec.gen_crop, 3), np.uint8)
    paths = []
    for ds, reader, summary in zip(config.datasets, readers, summaries):
        path = store_path(ds.path, store_key(summary, spec, fingerprint), config.stats_dir)
        paths.append(path)
        try:
            FrameCodeStore(path)
            continue
        except FileNotFoundError:
            pass
        if jax.process_index() == 0:
            log.info("Encoding the generation frames of %s with the VQ-VAE (once).", ds.name)
            blank = np.asarray(encode(vqvae_params, jnp.asarray(blank_frame)))[0]
            records = encode_dataset(
                encode, vqvae_params, reader, summary, ds, spec, progress=progress
            )
            meta = {"dataset": ds.name, "vqvae": fingerprint, "crop": spec.gen_crop}
            write_store(path, len(summary.lengths), records, blank, meta)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("f1_jax frame codes written")
    return dataclasses.replace(config, frame_code_stores=tuple(paths))
