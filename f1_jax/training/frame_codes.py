"""Encodes a run's datasets to frame-code stores once, so the train step needs no VQ-VAE.

With `data.frame_codes`, the trainer calls `ensure_frame_codes` before it builds its data
iterators: every generation-camera frame of every dataset is centre-cropped as the observation
contract crops it, encoded by the run's own frozen VQ-VAE and stored (`data_pipelines.frame_codes`).
A store's key covers the VQ-VAE's weights, the crop and the dataset's content, so a store is
reused exactly when it would hold the same codes.

Every process encodes its own share of each dataset's records (`part_ranges`: contiguous, balanced
by frames) on its own devices and writes its part of the store; once every process has written
its part, process 0 writes the index that makes the store complete. A job killed while encoding
leaves some parts and no index: the store is not used, and the next start encodes only the parts
that are missing (with the same number of processes; another count starts over).
"""

import dataclasses
import hashlib
import logging
from typing import Any, Iterator

import jax
import numpy as np
import tqdm
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipelines import DataConfig, schema
from data_pipelines.frame_codes import (
    FrameCodeStore,
    complete_store,
    part_ranges,
    present_parts,
    store_path,
    write_part,
)
from data_pipelines.pipeline import load_summaries
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import for_dataset, standardize_record
from data_pipelines.summary import DatasetSummary
from f1_common import transforms
from f1_jax.models.f1 import F1, to_unit_range

log = logging.getLogger("f1_jax")

STORE_FORMAT = "frame-codes-v2"  # v2: stores written in parts, one per process


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


def host_params(vqvae_params: Any) -> Any:
    """The VQ-VAE's parameters as host NumPy arrays on every process (an all-gather when they are
    sharded across processes; every process must call this)."""
    leaves = jax.tree.leaves(vqvae_params)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return jax.device_get(vqvae_params)
    return multihost_utils.process_allgather(vqvae_params, tiled=True)


class LocalEncoder:
    """(uint8 frames [N, c, c, 3]) -> int32 codes [N, L] on this process's own devices: the
    frames split over them, the VQ-VAE replicated (no collective with other processes)."""

    def __init__(self, model: F1, params: Any, devices=None):
        mesh = Mesh(np.asarray(devices or jax.local_devices()), ("frames",))
        self.num_devices = mesh.size
        self._frames = NamedSharding(mesh, PartitionSpec("frames"))
        self.params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

        def codes(vqvae_params: Any, frames: jax.Array) -> jax.Array:
            x = to_unit_range(frames)[:, None]
            out = model.apply({"params": {"vqvae": vqvae_params}}, x, method=F1.frame_codes)
            return out[:, 0]

        self._codes = jax.jit(codes, out_shardings=self._frames)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames: uint8 [N, c, c, 3] with N a multiple of num_devices."""
        return np.asarray(self._codes(self.params, jax.device_put(frames, self._frames)))


def encode_dataset(
    encode: LocalEncoder,
    reader: EpisodeReader,
    summary: DatasetSummary,
    ds,
    spec: transforms.ObservationSpec,
    records: range | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """(record, codes [T, L]) of every usable record (of `records`, default all) that has the
    generation camera, encoding `batch_size` frames per call across records (one compiled
    program: the last batch is padded)."""
    batch_size = -(-batch_size // encode.num_devices) * encode.num_devices
    pending: list[tuple[int, list[np.ndarray]]] = []  # records whose frames wait for a batch
    waiting = 0

    def flush() -> Iterator[tuple[int, np.ndarray]]:
        frames = [f for _, record_frames in pending for f in record_frames]
        codes = []
        for start in range(0, len(frames), batch_size):
            chunk = np.stack(frames[start : start + batch_size])
            padded = np.zeros((batch_size, *chunk.shape[1:]), chunk.dtype)
            padded[: len(chunk)] = chunk
            codes.append(encode(padded)[: len(chunk)])
        codes = np.concatenate(codes)
        offset = 0
        for record, record_frames in pending:
            yield record, codes[offset : offset + len(record_frames)]
            offset += len(record_frames)

    usable = np.flatnonzero(summary.lengths > 0)
    if records is not None:
        usable = usable[(usable >= records.start) & (usable < records.stop)]
    for record in tqdm.tqdm(usable, desc=f"frame codes {ds.name}", disable=not progress):
        raw = reader.decode(int(record))
        episode = standardize_record(
            for_dataset(ds), raw, ds.name, int(record), ds.cameras, options=ds.lerobot
        )
        if spec.gen_camera not in episode.images:
            continue
        frames = [
            transforms.generation_crop(schema.decode_frame(data), spec)
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
    config: DataConfig,
    model: F1,
    vqvae_params: Any,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataConfig:
    """`config` with `frame_code_stores` set, writing this process's part of every store that is
    not complete yet; returns once every store is complete (every process must call it).

    process_index / process_count: which part this process writes, of how many (default: JAX's
    process index and count; given explicitly, one process can write one part of a store).
    Raises FileNotFoundError naming the missing parts when a store is still incomplete after
    every process has written its part.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    spec = config.observation
    readers, summaries = load_summaries(config, progress=False)
    params = host_params(vqvae_params)
    fingerprint = vqvae_fingerprint(params)
    encoder = None
    paths, incomplete = [], []
    for ds, reader, summary in zip(config.datasets, readers, summaries):
        path = store_path(ds.path, store_key(summary, spec, fingerprint), config.stats_dir)
        paths.append(path)
        try:
            FrameCodeStore(path)
            continue
        except FileNotFoundError:
            incomplete.append((ds, summary, path))
        first, stop = part_ranges(summary.lengths, count)[index]
        if index in present_parts(path, count):
            log.info(
                "%s: part %d of %d of its frame codes is already written.", ds.name, index, count
            )
            continue
        log.info(
            "Encoding the generation frames of %s, records [%d, %d) (part %d of %d), with the "
            "VQ-VAE (once).", ds.name, first, stop, index, count,
        )  # fmt: skip
        encoder = encoder or LocalEncoder(model, params)
        records = encode_dataset(
            encoder, reader, summary, ds, spec, range(first, stop), progress=progress
        )
        write_part(path, index, count, first, stop, records, spec.frame_codes)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("f1_jax frame-code parts written")
    if incomplete and jax.process_index() == 0:
        encoder = encoder or LocalEncoder(model, params)
        blank_frames = np.zeros((encoder.num_devices, spec.gen_crop, spec.gen_crop, 3), np.uint8)
        blank = encoder(blank_frames)[0]
        for ds, summary, path in incomplete:
            meta = {"dataset": ds.name, "vqvae": fingerprint, "crop": spec.gen_crop}
            complete_store(path, count, len(summary.lengths), blank, meta)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("f1_jax frame-code stores complete")
    for path in paths:
        FrameCodeStore(path)  # every process checks that each store is complete
    return dataclasses.replace(config, frame_code_stores=tuple(paths))
