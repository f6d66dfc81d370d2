"""Random access to the episodes of a TFDS/RLDS dataset directory.

Each record is one serialized episode (`tf.train.Example`). TFRecord shards are made randomly
accessible by an index of record offsets built from the record headers (no copy of the data);
ArrayRecord shards (e.g. written by `python -m data_pipelines.convert`) are random access by
construction. Records are decoded with the dataset's own TFDS features
(`features.deserialize_example_np`), leaving images as encoded bytes so they are decoded late,
only for the frames a sample uses.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

import numpy as np

from data_pipelines import schema

_HEADER = 12  # uint64 length + uint32 masked crc of the length
_FOOTER = 4  # uint32 masked crc of the data


class CorruptRecordError(RuntimeError):
    """A record could not be read or decoded."""


def scan_tfrecord(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Offsets and lengths of the payloads of all records of one TFRecord file.

    Returns (offsets int64 [N], lengths int64 [N], n_broken) where n_broken is 1 when the file ends
    in a truncated record or a length field pointing past the end of the file (the rest of the file
    is unreadable, so scanning stops there), else 0.
    """
    size = os.path.getsize(path)
    offsets, lengths = [], []
    pos = 0
    with open(path, "rb") as f:
        while pos < size:
            header = f.read(_HEADER)
            if len(header) < _HEADER:
                return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), 1
            (length,) = struct.unpack("<Q", header[:8])
            end = pos + _HEADER + length + _FOOTER
            if end > size:
                return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), 1
            offsets.append(pos + _HEADER)
            lengths.append(length)
            pos = end
            f.seek(pos)
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), 0


def _skip_image_decoders(feature: Any) -> Any:
    """A TFDS `decoders` tree that leaves every Image feature undecoded (bytes)."""
    import tensorflow_datasets as tfds

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
    from tensorflow_datasets.core.data_sources.python import PythonDataSource

    if isinstance(x, dict):
        return {k: _decode_tree(v) for k, v in x.items()}
    if isinstance(x, PythonDataSource):
        return schema.stack_steps(x)
    return x


class EpisodeReader:
    """Random-access reader of one split of a TFDS dataset directory (`.../name/version`).

    Picklable: open file handles and TFDS feature objects are recreated lazily in each process
    (grain worker processes receive a pickled copy).
    """

    def __init__(self, dataset_dir: str, split: str = "train"):
        import tensorflow_datasets as tfds

        if not os.path.isdir(dataset_dir):
            raise FileNotFoundError(f"dataset directory {dataset_dir!r} does not exist")
        if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
            raise FileNotFoundError(
                f"{dataset_dir!r} has no dataset_info.json: point the config at the TFDS version "
                "directory, e.g. .../bridge_dataset/1.0.0"
            )
        builder = tfds.builder_from_directory(dataset_dir)
        info = builder.info
        if split not in info.splits:
            raise KeyError(f"split {split!r} not in {dataset_dir}; available: {list(info.splits)}")
        self.dataset_dir = dataset_dir
        self.split = split
        self.tfds_name = info.name
        self.file_format = str(getattr(info.file_format, "value", info.file_format) or "tfrecord")
        self.paths = [os.fspath(p) for p in info.splits[split].filepaths]
        missing = [p for p in self.paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} shard(s) of {dataset_dir} missing, e.g. {missing[0]}"
            )
        self.num_broken_tails = 0
        if self.file_format == "tfrecord":
            shard_ids, offsets, lengths = [], [], []
            for i, p in enumerate(self.paths):
                off, ln, broken = scan_tfrecord(p)
                shard_ids.append(np.full(len(off), i, np.int32))
                offsets.append(off)
                lengths.append(ln)
                self.num_broken_tails += broken
            self._shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
            self._offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
            self._length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
            self._num_records = len(self._offset)
        elif self.file_format == "array_record":
            self._num_records = int(sum(info.splits[split].shard_lengths))
        else:
            raise ValueError(f"{dataset_dir}: unsupported file format {self.file_format!r}")
        self._fds: dict[int, int] = {}
        self._array_source = None
        self._features = None
        self._decoders = None
        self._lock = threading.Lock()  # grain calls decode() from several threads

    def __len__(self) -> int:
        return self._num_records

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

    def serialized(self, i: int) -> bytes:
        """The raw serialized `tf.train.Example` bytes of record `i`."""
        if not 0 <= i < self._num_records:
            raise IndexError(f"record {i} out of range [0, {self._num_records})")
        if self.file_format == "array_record":
            with self._lock:
                if self._array_source is None:
                    from array_record.python import array_record_data_source

                    self._array_source = array_record_data_source.ArrayRecordDataSource(self.paths)
            return self._array_source[i]
        shard = int(self._shard[i])
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        n = int(self._length[i])
        data = os.pread(fd, n, int(self._offset[i]))
        if len(data) != n:
            raise CorruptRecordError(f"{self.paths[shard]}: short read of record {i}")
        return data

    def _load_features(self):
        import tensorflow_datasets as tfds

        features = tfds.builder_from_directory(self.dataset_dir).info.features
        self._decoders = _skip_image_decoders(features)
        self._features = features  # published last: decode() checks it without the lock

    def decode(self, i: int) -> dict[str, Any]:
        """Record `i` decoded with the dataset's TFDS features; `steps` stacked to arrays [T, ...].

        Raises CorruptRecordError when the record cannot be read or parsed.
        """
        if self._features is None:
            with self._lock:
                if self._features is None:
                    self._load_features()
        try:
            example = self._features.deserialize_example_np(
                self.serialized(i), decoders=self._decoders
            )
            return _decode_tree(example)
        except (IndexError, CorruptRecordError):
            raise
        except Exception as e:  # protobuf DecodeError, bad shapes, ...: the record is unusable.
            raise CorruptRecordError(
                f"{self.dataset_dir} record {i}: cannot decode ({type(e).__name__}: {e})"
            ) from e
