"""One pass over a dataset: episode lengths, corrupt records and state/action statistics.

The pass decodes and standardises every episode once (tqdm progress bar) and caches the result
as JSON keyed by `statistics.fingerprint`, so later runs (and other hosts) only read the JSON.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import tqdm

from data_pipelines import schema, statistics
from data_pipelines.config import DatasetConfig
from data_pipelines.reader import CorruptRecordError, EpisodeReader
from data_pipelines.sources import get_source

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """What the sampler needs to know about one dataset.

    sample_ranges: int64 [num_records, 2]; [lo, hi) of steps drawable as t ([0, 0) = skipped).
    lengths: int64 [num_records], standardised episode length (0 = skipped).
    corrupt: record ids that could not be decoded; unusable: decoded but rejected by the source
    (e.g. Bridge episodes too short to relabel).
    """

    name: str
    key: str
    lengths: np.ndarray
    sample_ranges: np.ndarray
    corrupt: tuple[int, ...]
    unusable: tuple[int, ...]
    state_stats: dict[str, Any]
    action_stats: dict[str, Any]

    @property
    def num_transitions(self) -> int:
        return int((self.sample_ranges[:, 1] - self.sample_ranges[:, 0]).sum())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "lengths": self.lengths.tolist(),
            "sample_ranges": self.sample_ranges.tolist(),
            "corrupt": list(self.corrupt),
            "unusable": list(self.unusable),
            "state": self.state_stats,
            "action": self.action_stats,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DatasetSummary":
        return cls(
            name=d["name"],
            key=d["key"],
            lengths=np.asarray(d["lengths"], np.int64),
            sample_ranges=np.asarray(d["sample_ranges"], np.int64).reshape(-1, 2),
            corrupt=tuple(d["corrupt"]),
            unusable=tuple(d["unusable"]),
            state_stats=d["state"],
            action_stats=d["action"],
        )


def scan(
    reader: EpisodeReader, ds: DatasetConfig, key: str, progress: bool = True
) -> DatasetSummary:
    """Decodes and standardises every record of `reader` (no caching)."""
    source = get_source(ds.source)
    n = len(reader)
    lengths = np.zeros(n, np.int64)
    ranges = np.zeros((n, 2), np.int64)
    corrupt, unusable, states, actions = [], [], [], []
    for i in tqdm.tqdm(range(n), desc=f"stats {ds.name}", disable=not progress, unit="ep"):
        try:
            ep = source.standardize(reader.decode(i), ds.name, i, ds.cameras)
        except CorruptRecordError as e:
            log.warning("skipping corrupt record: %s", e)
            corrupt.append(i)
            continue
        except schema.SchemaError as e:
            log.warning("skipping unusable episode %s/%d: %s", ds.name, i, e)
            unusable.append(i)
            continue
        lengths[i] = ep.length
        ranges[i] = ep.sample_range
        # Only sampleable steps: segment records share context frames with their neighbours.
        lo, hi = ep.sample_range
        states.append(ep.state[lo:hi])
        actions.append(ep.action[lo:hi])
    if reader.num_broken_tails:
        log.warning("%s: %d shard(s) end in a truncated record", ds.name, reader.num_broken_tails)
        corrupt.extend([-1] * reader.num_broken_tails)  # unreadable tails have no record id
    if not states:
        raise ValueError(
            f"dataset {ds.name!r} at {ds.path}: no readable episodes "
            f"({len(corrupt)} corrupt, {len(unusable)} unusable)"
        )
    return DatasetSummary(
        name=ds.name,
        key=key,
        lengths=lengths,
        sample_ranges=ranges,
        corrupt=tuple(corrupt),
        unusable=tuple(unusable),
        state_stats=statistics.array_stats(statistics.combine_rows(states)),
        action_stats=statistics.array_stats(statistics.combine_rows(actions)),
    )


def load_or_compute(
    reader: EpisodeReader, ds: DatasetConfig, stats_dir: str | None = None, progress: bool = True
) -> DatasetSummary:
    """The cached summary of `ds` if its fingerprint matches, else computes and caches it."""
    source = get_source(ds.source)
    key = statistics.fingerprint(ds.path, ds.split, ds.source, source.TRANSFORM_VERSION)
    path = statistics.cache_path(ds.path, key, stats_dir)
    cached = statistics.load_json(path)
    if cached is not None and cached.get("key") == key:
        return dataclasses.replace(DatasetSummary.from_json(cached), name=ds.name)
    summary = scan(reader, ds, key, progress)
    statistics.save_json(path, summary.to_json())
    return summary
