"""Random access to the episodes of a TFDS/RLDS dataset directory, with every read verified.

Each record is one serialized episode (`tf.train.Example`). TFRecord shards are made randomly
accessible by an index of record offsets built from the record headers (no copy of the data);
ArrayRecord shards (e.g. written by `python -m data_pipelines.convert`) are random access by
construction. Records are decoded with the dataset's own TFDS features
(`features.deserialize_example_np`), leaving images as encoded bytes so they are decoded late,
only for the frames a sample uses.

Where: a local directory or a `gs://` URI (`data_pipelines.storage`). A local shard is read with
`os.pread`; a shard in a bucket with one ranged GET per record (header, data and footer together)
and indexed by hopping from header to header through a small read window, shards in parallel.

Integrity: indexing checks every TFRecord length checksum (a broken length field is skipped over by
searching for the next valid header) and compares each shard's record count with
`dataset_info.json`; every read checks the record's header and data checksums (TFRecord) or
Riegeli's chunk hashes (ArrayRecord). Failures raise `CorruptRecordError` naming the dataset,
shard and record.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import struct
import threading
from typing import Any

import google_crc32c
import numpy as np

from data_pipelines import schema, storage
from data_pipelines.integrity import CORRUPT, CorruptRecordError, SkippedRecord, masked_crc32c

__all__ = ["CorruptRecordError", "EpisodeReader", "TFRecordIndex", "scan_tfrecord"]

log = logging.getLogger(__name__)

_HEADER = 12  # uint64 length + uint32 masked crc of the length
_FOOTER = 4  # uint32 masked crc of the data
_RESYNC_CHUNK = 1 << 22  # bytes searched per read while looking for the next valid header
_REMOTE_INDEX_THREADS = 16  # shards of a bucket indexed at once (each read waits on the network)


@dataclasses.dataclass(frozen=True)
class FramingProblem:
    """Records of a shard that cannot be located: after `indexed_before` indexed records, at
    byte `offset`, until byte `resumed_at` where a valid record header was found again (-1: the
    end of the file). `records`: how many records the gap holds when the file itself proves it
    (one record whose data checksum still verifies), else None."""

    indexed_before: int
    offset: int
    reason: str
    resumed_at: int
    records: int | None = None


@dataclasses.dataclass(frozen=True)
class TFRecordIndex:
    """Where the records of one TFRecord file are.

    offsets / lengths: int64 [N] payload offsets and sizes; crcs: uint32 [N] each payload's stored
    masked CRC-32C; problems: stretches of the file whose framing is broken (not indexed).
    """

    offsets: np.ndarray
    lengths: np.ndarray
    crcs: np.ndarray
    problems: tuple[FramingProblem, ...]


def _valid_header(header: bytes, pos: int, size: int) -> int | None:
    """The payload length if the 12 header bytes at file position `pos` verify and fit."""
    length, crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != crc or pos + _HEADER + length + _FOOTER > size:
        return None
    return length


def _resync(f, start: int, size: int) -> int | None:
    """The first position >= start holding a record whose header and data checksums verify.

    Candidates are pre-filtered with numpy: a real length is < size, so its high bytes are 0.
    """
    high = max(1, -(-size.bit_length() // 8))  # bytes [high, 8) of any real length are zero
    pos = start
    while pos + _HEADER + _FOOTER <= size:
        f.seek(pos)
        chunk = f.read(_RESYNC_CHUNK + _HEADER - 1)
        arr = np.frombuffer(chunk, np.uint8)
        n = len(arr) - _HEADER + 1
        if n <= 0:
            return None
        ok = np.ones(n, bool)
        for j in range(high, 8):
            ok &= arr[j : j + n] == 0
        for q in np.flatnonzero(ok).tolist():
            length = _valid_header(chunk[q : q + _HEADER], pos + q, size)
            if length is None:
                continue
            f.seek(pos + q + _HEADER)
            data = f.read(length + _FOOTER)
            if masked_crc32c(data[:length]) == struct.unpack("<I", data[length:])[0]:
                return pos + q
        pos += n
    return None


def scan_tfrecord(path: str, size: int | None = None) -> TFRecordIndex:
    """Index one TFRecord file (local or gs://) from its record headers, verifying every length
    checksum. `size`: the file's size when already known (a bucket listing gives it).

    A record whose length field fails its checksum (or points past the end of the file) cannot
    be located; indexing resumes at the next position holding a record whose header and data
    checksums both verify, and the gap is reported as a FramingProblem.
    """
    size = storage.getsize(path) if size is None else size
    offsets, lengths, crcs, problems = [], [], [], []
    pos = 0
    with storage.open_ranged(path, size) as f:
        while pos < size:
            f.seek(pos)
            header = f.read(_HEADER)
            k = len(offsets)
            if len(header) < _HEADER:
                problems.append(
                    FramingProblem(k, pos, f"file ends {len(header)} bytes into a header", -1)
                )
                break
            length = _valid_header(header, pos, size)
            if length is None:
                (raw_len,) = struct.unpack("<Q", header[:8])
                if masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                    reason = "length field fails its checksum"
                else:
                    reason = f"record of {raw_len} bytes runs past the end of the file (truncated?)"
                nxt = _resync(f, pos + 1, size)
                records = None
                if nxt is not None and nxt - pos >= _HEADER + _FOOTER:
                    # Exactly one record in the gap if its data still matches the footer before nxt.
                    f.seek(pos + _HEADER)
                    body = f.read(nxt - pos - _HEADER - _FOOTER)
                    if masked_crc32c(body) == struct.unpack("<I", f.read(_FOOTER))[0]:
                        records = 1
                problems.append(FramingProblem(k, pos, reason, -1 if nxt is None else nxt, records))
                if nxt is None:
                    break
                pos = nxt
                continue
            f.seek(pos + _HEADER + length)
            (crc,) = struct.unpack("<I", f.read(_FOOTER))
            offsets.append(pos + _HEADER)
            lengths.append(length)
            crcs.append(crc)
            pos += _HEADER + length + _FOOTER
    return TFRecordIndex(
        np.asarray(offsets, np.int64),
        np.asarray(lengths, np.int64),
        np.asarray(crcs, np.uint32),
        tuple(problems),
    )


def _skip_image_decoders(feature: Any) -> Any:
    """A TFDS `decoders` tree that leaves every Image feature undecoded (bytes)."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    if isinstance(feature, tfds.features.Image):
        return tfds.decode.SkipDecoding()
    if isinstance(feature, tfds.features.Dataset):
        return _skip_image_decoders(feature.feature)
    if isinstance(feature, tfds.features.FeaturesDict):
        out = {}
        for k, v in feature.items():
            d = _skip_image_decoders(v)
            if d is not None:
                out[k] = d
        return out or None
    return None


def _decode_tree(x: Any) -> Any:
    """Stacks nested TFDS `Dataset` features (lazy per-step sources) into arrays [T, ...]."""
    from tensorflow_datasets.core.data_sources.python import PythonDataSource  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    if isinstance(x, dict):
        return {k: _decode_tree(v) for k, v in x.items()}
    if isinstance(x, PythonDataSource):
        return schema.stack_steps(x)
    return x


def _file_crc32c(path: str, chunk: int = 1 << 24) -> int:
    crc = 0
    with storage.open_ranged(path) as f:
        while block := f.read(chunk):
            crc = google_crc32c.extend(crc, block)
    return crc


def _metadata_files(sizes: dict[str, int]) -> list[str]:
    """The TFDS metadata among a dataset folder's files: everything small that is neither a
    shard nor one of this project's caches."""
    return [
        name
        for name, size in sizes.items()
        if ".tfrecord-" not in name
        and ".array_record-" not in name
        and not name.startswith(("f1_", "."))
        and size < (16 << 20)
    ]


class EpisodeReader:
    """Random-access reader of one split of a TFDS dataset directory (`.../name/version`).

    Picklable: open file handles and TFDS feature objects are recreated lazily in each process
    (grain worker processes receive a pickled copy).
    """

    # Verify TFRecord checksums on every read. Only benchmarks turn this off, to measure its cost.
    VERIFY_CHECKSUMS = True

    def __init__(self, dataset_dir: str, split: str = "train"):
        import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

        dataset_dir = dataset_dir.rstrip("/") if storage.is_remote(dataset_dir) else dataset_dir
        if not storage.isdir(dataset_dir):
            raise FileNotFoundError(f"dataset directory {dataset_dir!r} does not exist")
        sizes = storage.list_sizes(dataset_dir)  # one listing: names and sizes of every shard
        if "dataset_info.json" not in sizes:
            raise FileNotFoundError(
                f"{dataset_dir!r} has no dataset_info.json: point the config at the TFDS version "
                "directory, e.g. .../bridge_dataset/1.0.0"
            )
        self.remote = storage.is_remote(dataset_dir)
        # TFDS reads the metadata (dataset_info.json, features.json) from a local folder: for a
        # bucket, a local copy of those small files; the shards are read from the bucket.
        self._metadata_dir = (
            storage.local_metadata_copy(dataset_dir, _metadata_files(sizes))
            if self.remote
            else dataset_dir
        )
        builder = tfds.builder_from_directory(self._metadata_dir)
        info = builder.info
        if split not in info.splits:
            raise KeyError(f"split {split!r} not in {dataset_dir}; available: {list(info.splits)}")
        self.dataset_dir = dataset_dir
        self.split = split
        self.tfds_name = info.name
        self.version = str(info.version)
        self.verify_checksums = self.VERIFY_CHECKSUMS
        self.file_format = str(getattr(info.file_format, "value", info.file_format) or "tfrecord")
        # TFDS names the shards; they are read from dataset_dir itself.
        self.shard_names = [storage.basename(os.fspath(p)) for p in info.splits[split].filepaths]
        self.paths = [storage.join(dataset_dir, n) for n in self.shard_names]
        missing = [n for n in self.shard_names if n not in sizes]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} shard(s) of {dataset_dir} missing, e.g. {missing[0]}"
            )
        self.shard_sizes = [sizes[n] for n in self.shard_names]
        listed = [int(n) for n in info.splits[split].shard_lengths]
        # What dataset_info.json says each shard holds (None: not recorded).
        self.expected_shard_lengths = listed if len(listed) == len(self.paths) else None
        self._framing: list[list[FramingProblem]] = [[] for _ in self.paths]
        if self.file_format == "array_record" and self.remote:
            raise ValueError(
                f"{dataset_dir}: ArrayRecord shards cannot be read from a bucket (array_record "
                "reads local files only); point data at the TFRecord dataset in the bucket, or "
                "copy the ArrayRecord dataset to a local disk"
            )
        if self.file_format == "tfrecord":
            shard_ids, offsets, lengths, crcs = [], [], [], []
            for i, idx in enumerate(self._index_shards()):
                shard_ids.append(np.full(len(idx.offsets), i, np.int32))
                offsets.append(idx.offsets)
                lengths.append(idx.lengths)
                crcs.append(idx.crcs)
                self._framing[i] = list(idx.problems)
            self._shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
            self._offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
            self._length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
            self._crc = np.concatenate(crcs) if crcs else np.zeros(0, np.uint32)
            self.shard_record_counts = [len(o) for o in offsets]
        elif self.file_format == "array_record":
            if self.expected_shard_lengths is None:
                raise ValueError(f"{dataset_dir}: dataset_info.json lists no shard lengths")
            self.shard_record_counts = list(self.expected_shard_lengths)
            self._shard = np.repeat(
                np.arange(len(self.paths), dtype=np.int32), self.shard_record_counts
            )
        else:
            raise ValueError(f"{dataset_dir}: unsupported file format {self.file_format!r}")
        self._num_records = int(sum(self.shard_record_counts))
        self._shard_start = np.concatenate([[0], np.cumsum(self.shard_record_counts)[:-1]]).astype(
            np.int64
        )
        self._gaps = self._resolve_gaps()
        # Position of each indexed record in its shard file (records lost in gaps counted).
        self._pos = np.arange(self._num_records, dtype=np.int64) - np.repeat(
            self._shard_start, self.shard_record_counts
        )
        for s, first, _, count in self._gaps:
            start = self._shard_start[s]
            self._pos[start + first : start + self.shard_record_counts[s]] += count
        self._fds: dict[int, int] = {}
        self._array_source = None
        self._features = None
        self._decoders = None
        self._lock = threading.Lock()  # grain calls decode() from several threads

    def __len__(self) -> int:
        return self._num_records

    def _index_shards(self):
        """Every shard's TFRecordIndex, in shard order (a bucket's shards in parallel)."""
        if not self.remote:
            return [scan_tfrecord(p, n) for p, n in zip(self.paths, self.shard_sizes)]
        with concurrent.futures.ThreadPoolExecutor(_REMOTE_INDEX_THREADS) as pool:
            return list(pool.map(scan_tfrecord, self.paths, self.shard_sizes))

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_fds={}, _array_source=None, _features=None, _decoders=None)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ where records are

    def locate(self, i: int) -> tuple[str, int]:
        """(shard file name, position of the record in that shard file) of record i."""
        return self.shard_names[int(self._shard[i])], int(self._pos[i])

    def where(self, i: int) -> str:
        """Human-readable location of record i, for error messages and logs."""
        shard, k = self.locate(i)
        return f"dataset {self.dataset_dir} shard {shard} record {k} (dataset record {i})"

    def _error(self, i: int, message: str) -> CorruptRecordError:
        shard, k = self.locate(i)
        return CorruptRecordError(
            f"{self.where(i)}: {message}", self.dataset_dir, shard, k, i, message
        )

    def _resolve_gaps(self) -> list[tuple[int, int, FramingProblem | None, int]]:
        """[(shard, first indexed record after the gap, problem, records lost)]: every stretch of
        a shard the index cannot reach. A gap's record count comes from the file when it proves
        it, else from dataset_info.json's shard length, else 1. A shard holding fewer records
        than listed without a framing problem was cut at a record boundary (problem None)."""
        out = []
        for s, probs in enumerate(self._framing):
            found = self.shard_record_counts[s]
            expected = (
                None if self.expected_shard_lengths is None else self.expected_shard_lengths[s]
            )
            known = sum(p.records for p in probs if p.records is not None)
            unknown = [p for p in probs if p.records is None]
            left = None if expected is None else max(expected - found - known, 0)
            for p in probs:
                if p.records is not None:
                    count = p.records
                elif left is None:
                    count = 1
                elif p is unknown[-1]:
                    count = left  # 0 for trailing garbage after the last listed record
                else:
                    count = min(1, left)
                    left -= count
                out.append((s, p.indexed_before, p, count))
            if expected is not None and not probs and expected > found:
                out.append((s, found, None, expected - found))
            elif expected is not None and expected < found:
                log.warning(
                    "%s shard %s holds %d records, dataset_info.json lists %d",
                    self.dataset_dir,
                    self.shard_names[s],
                    found,
                    expected,
                )
        return out

    def unreadable(self) -> list[SkippedRecord]:
        """Records the index cannot reach: broken framing, or shards holding fewer records than
        dataset_info.json lists (e.g. a file truncated at a record boundary)."""
        out = []
        lost_before = collections.Counter()
        for s, first, p, count in self._gaps:
            name = self.shard_names[s]
            position = first + lost_before[s]
            lost_before[s] += count
            if p is None:
                expected = self.expected_shard_lengths[s]
                reason = (
                    f"shard holds {self.shard_record_counts[s]} records, dataset_info.json lists "
                    f"{expected} (file truncated at a record boundary?)"
                )
            else:
                end = "the end of the file" if p.resumed_at < 0 else f"byte {p.resumed_at}"
                reason = f"{p.reason} (header at byte {p.offset}); unreadable up to {end}"
            out.append(SkippedRecord(CORRUPT, -1, name, position, reason, count))
        return out

    @property
    def num_expected_records(self) -> int:
        """Records the split should hold: the indexed ones plus those lost in gaps."""
        return self._num_records + sum(count for *_, count in self._gaps)

    def content_fingerprint(self) -> str:
        """sha256 of the shards' content as the shards themselves vouch for it: for TFRecord the
        stored per-record checksums, sizes and framing (one header read per record, no data
        read); for ArrayRecord the CRC-32C of every shard's bytes (one full read)."""
        h = hashlib.sha256(f"{self.file_format}|{self.split}".encode())
        for s, (path, name) in enumerate(zip(self.paths, self.shard_names)):
            h.update(f"|{name}:{self.shard_sizes[s]}:".encode())
            if self.file_format == "tfrecord":
                sel = slice(
                    self._shard_start[s], self._shard_start[s] + self.shard_record_counts[s]
                )
                h.update(self._length[sel].tobytes())
                h.update(self._crc[sel].tobytes())
                h.update(repr(self._framing[s]).encode())
            else:
                h.update(f"{_file_crc32c(path):08x}".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ reading

    def serialized(self, i: int) -> bytes:
        """The raw serialized `tf.train.Example` bytes of record `i`, checksums verified."""
        if not 0 <= i < self._num_records:
            raise IndexError(
                f"record {i} out of range [0, {self._num_records}) of {self.dataset_dir}"
            )
        if self.file_format == "array_record":
            with self._lock:
                if self._array_source is None:
                    from array_record.python import array_record_data_source  # deferred: array_record ships with tensorflow-datasets; the array_record layout only

                    self._array_source = array_record_data_source.ArrayRecordDataSource(self.paths)
            try:
                return self._array_source[i]
            except Exception as e:  # Riegeli reports hash mismatches as RuntimeError
                raise self._error(i, f"unreadable ({type(e).__name__}: {e})") from e
        shard = int(self._shard[i])
        if self.remote:
            return self._serialized_remote(i, shard)
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        n, off = int(self._length[i]), int(self._offset[i])
        data = os.pread(fd, n, off)
        if len(data) != n:
            raise self._error(i, f"short read ({len(data)} of {n} bytes): the shard shrank")
        if not self.verify_checksums:
            return data
        # Separate reads keep `data` uncopied (the CRC library takes bytes, not memoryviews).
        header = os.pread(fd, _HEADER, off - _HEADER)
        footer = os.pread(fd, _FOOTER, off + n)
        return self._checked(i, header, data, footer)

    def _checked(self, i: int, header: bytes, data: bytes, footer: bytes) -> bytes:
        """`data` of record i if its framing and checksums hold (and match the index)."""
        if len(footer) != _FOOTER:
            raise self._error(i, "the shard ends inside the record: it shrank since indexing")
        length, length_crc = struct.unpack("<QI", header)
        if length != len(data) or masked_crc32c(header[:8]) != length_crc:
            raise self._error(i, "record header changed or fails its checksum since indexing")
        (stored,) = struct.unpack("<I", footer)
        computed = masked_crc32c(data)
        if computed != stored:
            raise self._error(
                i, f"data fails its checksum (stored {stored:#010x}, computed {computed:#010x})"
            )
        if stored != self._crc[i]:
            raise self._error(i, "the shard was rewritten since it was indexed")
        return data

    def _serialized_remote(self, i: int, shard: int) -> bytes:
        """Record i of a shard in a bucket: one ranged GET of its header, data and footer, with
        the same checks as a local read."""
        n, off = int(self._length[i]), int(self._offset[i])
        try:
            blob = storage.read_range(self.paths[shard], off - _HEADER, _HEADER + n + _FOOTER)
        except FileNotFoundError as e:
            raise self._error(i, f"the shard is gone from the bucket ({e})") from e
        if len(blob) < _HEADER + n:
            raise self._error(
                i, f"short read ({len(blob)} of {_HEADER + n} bytes): the shard shrank"
            )
        data = blob[_HEADER : _HEADER + n]
        if not self.verify_checksums:
            return data
        return self._checked(i, blob[:_HEADER], data, blob[_HEADER + n :])

    @property
    def features(self):
        """The dataset's TFDS FeaturesDict (loaded once per process)."""
        if self._features is None:
            with self._lock:
                if self._features is None:
                    self._load_features()
        return self._features

    def _load_features(self):
        import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

        features = tfds.builder_from_directory(self._metadata_dir).info.features
        self._decoders = _skip_image_decoders(features)
        self._features = features  # published last: `features` checks it without the lock

    def decode(self, i: int) -> dict[str, Any]:
        """Record `i` decoded with the dataset's TFDS features; `steps` stacked to arrays [T, ...].

        Raises CorruptRecordError (naming dataset, shard and record) when the record fails its
        checksum or cannot be parsed, schema.EmptyEpisodeError when it has no steps.
        """
        features = self.features
        data = self.serialized(i)
        try:
            return _decode_tree(features.deserialize_example_np(data, decoders=self._decoders))
        except schema.EmptyEpisodeError as e:
            raise schema.EmptyEpisodeError(f"{self.where(i)}: {e}") from e
        except Exception as e:  # protobuf DecodeError, bad shapes, ...: the record is unusable.
            raise self._error(i, f"cannot decode ({type(e).__name__}: {e})") from e
