"""One pass over a dataset: episode lengths, what was skipped and why, state/action statistics.

The pass decodes (checksums verified) and standardises every record once (tqdm progress bar) and
caches the result as JSON keyed by `statistics.fingerprint` (the shards' content, the metadata,
the transform version and the options that change the numbers), so later runs and other hosts
only read the JSON. Everything the pass leaves out is counted under its own name and named by
shard and record: `corrupt` (checksum, framing or parse failure), `zero_steps`, `unusable`
(rejected by the source); episodes kept with a quirk are counted too: `empty_instruction` and,
once a tokenizer is known, `truncated_instruction`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

import numpy as np
import tqdm

from data_pipelines import schema, statistics
from data_pipelines.config import DatasetConfig
from data_pipelines.integrity import (
    CORRUPT,
    UNUSABLE,
    ZERO_STEPS,
    CorruptRecordError,
    SkippedRecord,
    bad_by_shard,
)
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import check_layout, get_source, standardize_record

log = logging.getLogger(__name__)

# Part of every cache key and checked on load: a summary written with another meaning is never
# reused (format 1 had no skip reasons, instructions or gripper convention).
SUMMARY_FORMAT = "f1_dataset_summary/2"


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """What the sampler needs to know about one dataset, and what was left out.

    lengths: int64 [num_indexed], standardised length of each indexed record (0 = skipped).
    sample_ranges: int64 [num_indexed, 2]; [lo, hi) of steps drawable as t ([0, 0) = skipped).
    skipped: every record left out (corrupt / zero_steps / unusable) with shard, position, reason.
    instructions: distinct instructions of the kept records; instruction_index: int32
      [num_indexed] into it (-1 = skipped).
    num_records: records the split should hold per dataset_info.json (indexed or not).
    shard_records: shard file name -> records it should hold.
    gripper_convention: the convention the action statistics are in.
    truncated_instructions: instructions longer than the token budget (None until
      `with_token_budget`; depends on the tokenizer, so it is not cached).
    """

    name: str
    key: str
    lengths: np.ndarray
    sample_ranges: np.ndarray
    skipped: tuple[SkippedRecord, ...]
    instructions: tuple[str, ...]
    instruction_index: np.ndarray
    num_records: int
    shard_records: dict[str, int]
    state_stats: dict[str, Any]
    action_stats: dict[str, Any]
    gripper_convention: str = "native"
    truncated_instructions: tuple[str, ...] | None = None

    def _ids(self, kind: str) -> tuple[int, ...]:
        return tuple(s.record for s in self.skipped if s.kind == kind)

    @property
    def corrupt(self) -> tuple[int, ...]:
        """Record ids that failed their checksum or parse (-1: records the index cannot reach)."""
        return self._ids(CORRUPT)

    @property
    def unusable(self) -> tuple[int, ...]:
        return self._ids(UNUSABLE)

    @property
    def zero_steps(self) -> tuple[int, ...]:
        return self._ids(ZERO_STEPS)

    @property
    def num_corrupt(self) -> int:
        return sum(s.count for s in self.skipped if s.kind == CORRUPT)

    @property
    def empty_instruction(self) -> tuple[int, ...]:
        """Kept records whose instruction is empty (OpenVLA drops them: `drop_unlabeled`)."""
        empty = {i for i, text in enumerate(self.instructions) if not text.strip()}
        return tuple(int(r) for r in np.flatnonzero(np.isin(self.instruction_index, list(empty))))

    @property
    def truncated_instruction(self) -> tuple[int, ...] | None:
        """Kept records whose instruction exceeds the token budget (None: not computed)."""
        if self.truncated_instructions is None:
            return None
        long = [self.instructions.index(t) for t in self.truncated_instructions]
        return tuple(int(r) for r in np.flatnonzero(np.isin(self.instruction_index, long)))

    def sampling_ranges(self, drop_unlabeled: bool = False) -> np.ndarray:
        """int64 [num_indexed, 2] drawable [lo, hi) per record, without empty-instruction
        records when drop_unlabeled."""
        ranges = self.sample_ranges.copy()
        if drop_unlabeled:
            ranges[list(self.empty_instruction)] = 0
        return ranges

    def num_sampled(self, drop_unlabeled: bool = False) -> int:
        r = self.sampling_ranges(drop_unlabeled)
        return int((r[:, 1] - r[:, 0]).sum())

    @property
    def num_transitions(self) -> int:
        return self.num_sampled(False)

    def counts(self) -> dict[str, int]:
        """Every count the summary reports, by name."""
        out = {
            "records": self.num_records,
            "episodes_kept": int((self.lengths > 0).sum()),
            "transitions": self.num_transitions,
            "corrupt": self.num_corrupt,
            "zero_steps": len(self.zero_steps),
            "unusable": len(self.unusable),
            "empty_instruction": len(self.empty_instruction),
        }
        if self.truncated_instructions is not None:
            out["truncated_instruction"] = len(self.truncated_instruction)
        return out

    def describe(self, limit: int = 5) -> str:
        """Multi-line report: the counts, then the first `limit` skipped records of each kind."""
        lines = [
            f"dataset {self.name!r}: " + ", ".join(f"{k} {v}" for k, v in self.counts().items())
        ]
        by_kind = collections.defaultdict(list)
        for s in self.skipped:
            by_kind[s.kind].append(s)
        for kind, items in by_kind.items():
            for s in items[:limit]:
                lines.append("  skipped " + s.describe(self.name))
            if len(items) > limit:
                lines.append(f"  ... {len(items) - limit} more {kind} (see the summary JSON)")
        if self.truncated_instructions:
            lines.append(
                f"  {len(self.truncated_instructions)} instruction(s) exceed the token budget and "
                f"are cut (keeping the closing newline), e.g. {self.truncated_instructions[0]!r}"
            )
        return "\n".join(lines)

    def bad_by_shard(self) -> dict[str, int]:
        return bad_by_shard(self.skipped, CORRUPT)

    def with_token_budget(self, tokenizer) -> "DatasetSummary":
        """A copy counting the instructions `tokenizer` (f1_common.tokenizer.Tokenizer) truncates."""
        long = tuple(t for t in self.instructions if tokenizer.token_count(t) > tokenizer.max_len)
        return dataclasses.replace(self, truncated_instructions=long)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SUMMARY_FORMAT,
            "name": self.name,
            "key": self.key,
            "counts": {k: v for k, v in self.counts().items() if k != "truncated_instruction"},
            "num_records": self.num_records,
            "shard_records": self.shard_records,
            "lengths": self.lengths.tolist(),
            "sample_ranges": self.sample_ranges.tolist(),
            "skipped": [s.to_json() for s in self.skipped],
            "instructions": list(self.instructions),
            "instruction_index": self.instruction_index.tolist(),
            "gripper_convention": self.gripper_convention,
            "state": self.state_stats,
            "action": self.action_stats,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DatasetSummary":
        if d.get("format") != SUMMARY_FORMAT:
            raise ValueError(f"summary format {d.get('format')!r}, expected {SUMMARY_FORMAT!r}")
        return cls(
            name=d["name"],
            key=d["key"],
            lengths=np.asarray(d["lengths"], np.int64),
            sample_ranges=np.asarray(d["sample_ranges"], np.int64).reshape(-1, 2),
            skipped=tuple(SkippedRecord.from_json(s) for s in d["skipped"]),
            instructions=tuple(d["instructions"]),
            instruction_index=np.asarray(d["instruction_index"], np.int32),
            num_records=int(d["num_records"]),
            shard_records=dict(d["shard_records"]),
            state_stats=d["state"],
            action_stats=d["action"],
            gripper_convention=d["gripper_convention"],
        )


def scan(
    reader: EpisodeReader,
    ds: DatasetConfig,
    key: str,
    progress: bool = True,
    gripper_convention: str = "native",
) -> DatasetSummary:
    """Decodes and standardises every record of `reader` (no caching)."""
    n = len(reader)
    lengths = np.zeros(n, np.int64)
    ranges = np.zeros((n, 2), np.int64)
    texts: list[str | None] = [None] * n
    skipped: list[SkippedRecord] = list(reader.unreadable())
    for s in skipped:
        log.warning("skipping %s", s.describe(ds.name))
    states, actions = [], []
    for i in tqdm.tqdm(range(n), desc=f"stats {ds.name}", disable=not progress, unit="ep"):
        shard, k = reader.locate(i)
        try:
            raw = reader.decode(i)
            ep = standardize_record(ds.source, raw, ds.name, i, ds.cameras, gripper_convention)
        except CorruptRecordError as e:
            skipped.append(SkippedRecord(CORRUPT, i, shard, k, e.reason))
        except schema.EmptyEpisodeError:
            skipped.append(SkippedRecord(ZERO_STEPS, i, shard, k, "episode has no steps"))
        except schema.SchemaError as e:
            skipped.append(SkippedRecord(UNUSABLE, i, shard, k, str(e)))
        else:
            lengths[i] = ep.length
            ranges[i] = ep.sample_range
            texts[i] = ep.language
            # Only sampleable steps: segment records share context frames with their neighbours.
            lo, hi = ep.sample_range
            states.append(ep.state[lo:hi])
            actions.append(ep.action[lo:hi])
            continue
        log.warning("skipping %s", skipped[-1].describe(ds.name))
    if not states:
        raise ValueError(
            f"dataset {ds.name!r} at {ds.path}: no readable episodes of {reader.num_expected_records}"
            f" ({', '.join(f'{k} {v}' for k, v in collections.Counter(s.kind for s in skipped).items())})"
        )
    instructions = tuple(sorted({t for t in texts if t is not None}))
    lookup = {t: j for j, t in enumerate(instructions)}
    index = np.array([-1 if t is None else lookup[t] for t in texts], np.int32)
    expected = reader.expected_shard_lengths or reader.shard_record_counts
    return DatasetSummary(
        name=ds.name,
        key=key,
        lengths=lengths,
        sample_ranges=ranges,
        skipped=tuple(skipped),
        instructions=instructions,
        instruction_index=index,
        num_records=reader.num_expected_records,
        shard_records=dict(zip(reader.shard_names, (int(x) for x in expected))),
        state_stats=statistics.array_stats(statistics.combine_rows(states)),
        action_stats=statistics.array_stats(statistics.combine_rows(actions)),
        gripper_convention=gripper_convention,
    )


def summary_key(reader: EpisodeReader, ds: DatasetConfig, gripper_convention: str) -> str:
    """The cache key of `ds`'s summary: content, metadata, transform and options."""
    source = get_source(ds.source)
    parts = [
        SUMMARY_FORMAT,
        ds.source,
        source.TRANSFORM_VERSION,
        ds.split,
        f"gripper={gripper_convention}",
    ]
    return statistics.fingerprint(ds.path, reader.content_fingerprint(), parts)


def load_or_compute(
    reader: EpisodeReader,
    ds: DatasetConfig,
    stats_dir: str | None = None,
    progress: bool = True,
    gripper_convention: str = "native",
) -> DatasetSummary:
    """The cached summary of `ds` if its key matches, else computes and caches it.

    Refuses (UnsupportedDatasetError) a dataset whose features the source cannot read, before
    reading any record.
    """
    check_layout(
        ds.source, reader.features, ds.name, ds.path, reader.tfds_name, reader.version, ds.cameras
    )
    key = summary_key(reader, ds, gripper_convention)
    path = statistics.cache_path(ds.path, key, stats_dir)
    cached = statistics.load_json(path)
    if cached is not None and cached.get("key") == key and cached.get("format") == SUMMARY_FORMAT:
        return dataclasses.replace(DatasetSummary.from_json(cached), name=ds.name)
    summary = scan(reader, ds, key, progress, gripper_convention)
    statistics.save_json(path, summary.to_json())
    return summary
