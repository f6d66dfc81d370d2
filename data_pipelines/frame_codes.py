"""A dataset's generation-camera frames as the frozen VQ-VAE's multi-scale codes, stored once.

The VQ-VAE never trains after its own stage, so the codes of a frame never change: with
`DataConfig.frame_codes`, the pipeline ships each sample's history and target frames as codes
(int32 [F, L], L = sum(pn^2) = 680 at full size) instead of uint8 frames, and the train step
skips the VQ-VAE and the frames' decoding. Codes are those of the centred generation crop (the
original's random crop of the 288 px frame would need one set of codes per crop position).

A store is a directory (`f1_frame_codes_<key>/`, on a local disk or in a bucket), written in parts,
one per process of the job that encoded it (each process encodes a contiguous share of the
records, `part_ranges`):
    part-<p>-of-<P>.npy    int16 [frames of the part's records, L]
    part-<p>-of-<P>.json   the part's record range and each record's [offset, length] in its .npy;
                           written after the .npy, so it marks the part as complete
    index.json             written last, once every part is present: [part, offset, length] per
                           record, the codes of an all-black frame ("blank", for datasets without
                           the generation camera) and what produced the codes
A store without index.json is never read; a job that restarts finds the parts already written
and encodes only the missing ones. The key covers the VQ-VAE's weights, the crop and the dataset's
content, so any change makes a new store. `f1_jax.training.frame_codes` encodes (it needs the
model); this module writes and reads the files.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable

import numpy as np

from data_pipelines import statistics, storage

INDEX_FILE = "index.json"
PART_FORMAT = "f1_frame_codes_part/1"
INDEX_FORMAT = "f1_frame_codes/2"


def store_path(dataset_dir: str, key: str, stats_dir: str | None = None) -> str:
    """Where the store of `key` lives: beside the dataset's statistics cache."""
    return storage.join(statistics.cache_dir(dataset_dir, stats_dir), f"f1_frame_codes_{key}")


def part_name(part: int, parts: int) -> str:
    return f"part-{part:05d}-of-{parts:05d}"


def part_ranges(lengths: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """[first, stop) record ranges, one per part: contiguous (records are in shard order, so a
    part is mostly whole shards), and balanced by frame count. lengths: int [num_records]."""
    cumulative = np.cumsum(np.asarray(lengths, np.int64))
    total = int(cumulative[-1]) if len(cumulative) else 0
    cuts = [0]
    for k in range(1, parts):
        # The first record whose frames reach the k-th share closes part k - 1.
        cuts.append(max(cuts[-1], int(np.searchsorted(cumulative, total * k / parts)) + 1))
    cuts.append(len(lengths))
    cuts = [min(c, len(lengths)) for c in cuts]
    return [(cuts[k], cuts[k + 1]) for k in range(parts)]


def present_parts(directory: str, parts: int) -> list[int]:
    """The parts of a `parts`-part store whose files are both written."""
    try:
        names = storage.list_sizes(directory)
    except FileNotFoundError:
        return []
    return [
        p
        for p in range(parts)
        if f"{part_name(p, parts)}.json" in names and f"{part_name(p, parts)}.npy" in names
    ]


def write_part(
    directory: str,
    part: int,
    parts: int,
    first: int,
    stop: int,
    records: Iterable[tuple[int, np.ndarray]],
    width: int,
) -> dict[str, Any]:
    """Writes part `part` of `parts` from (record, codes int [T, L]) pairs of records in
    [first, stop); records never given have no frames. The .npy is written first and the .json
    last, each whole (`storage.write_bytes`), so a part is either complete or absent."""
    spans = np.zeros((stop - first, 2), np.int64)
    chunks, offset = [], 0
    for record, codes in records:
        if not first <= record < stop:
            raise ValueError(f"record {record} is not in part {part}'s range [{first}, {stop})")
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"record {record}: codes must be [T, {width}], got {codes.shape}")
        if codes.max(initial=0) > np.iinfo(np.int16).max:
            raise ValueError(f"record {record}: code {codes.max()} does not fit int16")
        spans[record - first] = (offset, len(codes))
        chunks.append(codes.astype(np.int16))
        offset += len(codes)
    stacked = np.concatenate(chunks) if chunks else np.zeros((0, width), np.int16)
    name = part_name(part, parts)
    buffer = io.BytesIO()
    np.save(buffer, stacked)
    storage.makedirs(directory)
    storage.write_bytes(storage.join(directory, f"{name}.npy"), buffer.getvalue())
    meta = {
        "format": PART_FORMAT,
        "part": part,
        "parts": parts,
        "records": [first, stop],
        "spans": spans.tolist(),
    }
    storage.write_bytes(storage.join(directory, f"{name}.json"), json.dumps(meta).encode())
    return meta


def complete_store(
    directory: str, parts: int, num_records: int, blank: np.ndarray, meta: dict[str, Any]
) -> str:
    """Writes index.json once every part is present (else FileNotFoundError naming the missing
    parts): from then on the store is complete and used."""
    missing = sorted(set(range(parts)) - set(present_parts(directory, parts)))
    if missing:
        raise FileNotFoundError(
            f"frame-code store {directory} is incomplete: parts {missing} of {parts} missing"
        )
    records = np.zeros((num_records, 3), np.int64)
    covered = np.zeros(num_records, bool)
    for p in range(parts):
        part = json.loads(
            storage.read_bytes(storage.join(directory, f"{part_name(p, parts)}.json"))
        )
        first, stop = part["records"]
        spans = np.asarray(part["spans"], np.int64).reshape(-1, 2)
        if part.get("format") != PART_FORMAT or len(spans) != stop - first or stop > num_records:
            raise ValueError(
                f"{directory}: part {p} does not match the dataset ({part['records']})"
            )
        records[first:stop, 0] = p
        records[first:stop, 1:] = spans
        covered[first:stop] = True
    if not covered.all():
        raise ValueError(
            f"{directory}: the parts leave records {np.flatnonzero(~covered)[:10]} out"
        )
    index = {
        "format": INDEX_FORMAT,
        "parts": parts,
        "records": records.tolist(),
        "blank": np.asarray(blank).tolist(),
        "meta": meta,
    }
    storage.write_bytes(storage.join(directory, INDEX_FILE), json.dumps(index).encode())
    return directory


class _BucketRows:
    """Rows of a 2-D .npy object in a bucket, read with ranged GETs (an object cannot be
    memory-mapped)."""

    def __init__(self, path: str):
        head = io.BytesIO(storage.read_range(path, 0, 4096))
        version = np.lib.format.read_magic(head)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(head)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got {shape}")
        self.path, self.shape, self.dtype = path, shape, dtype
        self.offset = head.tell()
        self.row_bytes = shape[1] * dtype.itemsize

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), L]: one ranged read spanning rows.min() .. rows.max()."""
        lo, hi = int(rows.min()), int(rows.max()) + 1
        data = storage.read_range(
            self.path, self.offset + lo * self.row_bytes, (hi - lo) * self.row_bytes
        )
        block = np.frombuffer(data, self.dtype).reshape(hi - lo, self.shape[1])
        return block[rows - lo]


class FrameCodeStore:
    """Read-only access to one dataset's stored frame codes (a local directory: memory-mapped
    parts; a bucket: ranged reads). Picklable (opened lazily in each process)."""

    def __init__(self, directory: str):
        try:
            index = json.loads(storage.read_bytes(storage.join(directory, INDEX_FILE)))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no complete frame-code store at {directory} (index.json missing); the trainer "
                "writes it before training when data.frame_codes is on"
            ) from None
        if index.get("format") != INDEX_FORMAT:
            raise FileNotFoundError(f"{directory}: store format {index.get('format')!r} is not "
                                    f"{INDEX_FORMAT!r}; it is re-encoded")  # fmt: skip
        self.directory = directory
        self.parts = int(index["parts"])
        self.records = np.asarray(index["records"], np.int64).reshape(-1, 3)
        self.blank = np.asarray(index["blank"], np.int32)
        self.meta: dict[str, Any] = index.get("meta", {})
        self._codes: dict[int, Any] = {}

    def __getstate__(self):
        return {**self.__dict__, "_codes": {}}

    def _part(self, part: int):
        if part not in self._codes:
            path = storage.join(self.directory, f"{part_name(part, self.parts)}.npy")
            self._codes[part] = (
                _BucketRows(path) if storage.is_remote(path) else np.load(path, mmap_mode="r")
            )
        return self._codes[part]

    def frames(self, record: int, indices: np.ndarray) -> np.ndarray:
        """int32 [len(indices), L]: the codes of frames `indices` of record `record`."""
        part, offset, length = self.records[record]
        if length == 0:
            raise KeyError(f"{self.directory}: record {record} has no stored frames")
        indices = np.asarray(indices, np.int64)
        if np.any(indices >= length):
            raise IndexError(
                f"{self.directory}: record {record} has {length} frames, not {indices}"
            )
        codes = self._part(int(part))
        if isinstance(codes, _BucketRows):
            return np.asarray(codes.rows(offset + indices), np.int32)
        return np.asarray(codes[offset + indices], np.int32)
